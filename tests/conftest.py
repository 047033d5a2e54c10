"""Shared fixtures: an isolated run store and data root per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Manifests written by tests never land in the user's cache."""
    if "HARNESS_DATA_ROOT" not in os.environ:
        monkeypatch.setenv("HARNESS_DATA_ROOT", str(tmp_path_factory.mktemp("data")))
