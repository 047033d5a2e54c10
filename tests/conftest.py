"""Shared fixtures: an isolated run store and data root per test; the SLURM cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
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


def cluster_answers() -> bool:
    """Whether a SLURM controller answers on this machine."""
    if shutil.which("sbatch") is None:
        return False
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):  # e.g. no slurm.conf: scontrol retries for 60 s
        return False


@pytest.fixture(scope="module")
def cluster() -> None:
    """Skip without a cluster, but fail under CI=true: CI must run these tests."""
    if cluster_answers():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but no SLURM cluster answers (`sbatch` missing or `scontrol ping` "
                    "failed): start it with `bash ../shared/slurm/local_cluster.sh start` in "
                    ".ci/run before the tests")
    pytest.skip("no local SLURM cluster (start one with `bash ../shared/slurm/"
                "local_cluster.sh start`); CI runs these tests")
