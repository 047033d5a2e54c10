"""Stop a training run right after a given epoch's checkpoint (for exact-resume tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.config import CellConfig


class Stop(Exception):
    """Raised in place of a crash once the chosen checkpoint is on disk."""


def train_interrupted(cls: Any, cfg: CellConfig, run_dir: Path, stop_after: int) -> None:
    """Train a fresh `cls()` until the checkpoint of epoch `stop_after` is written, then die."""
    m = cls()
    save = m.save_checkpoint

    def save_then_stop() -> None:
        save()
        if m.epoch_done == stop_after:
            raise Stop

    m.save_checkpoint = save_then_stop
    with pytest.raises(Stop):
        m.train(cfg, run_dir, resume=False)
