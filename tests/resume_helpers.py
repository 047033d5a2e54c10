"""Exact-resume comparison: stop a run after a given epoch's checkpoint, resume, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import CellConfig
from harness.contract import train_interrupted


def assert_resume_matches(cls: Any, cfg: CellConfig, run_dir: Path, stop_after: int,
                          full_model: torch.nn.Module, full_feats: dict[str, np.ndarray]) -> None:
    """Stop after epoch `stop_after`, resume in a fresh instance: weights and features must equal
    those of the uninterrupted run (`full_model`, `full_feats`) bit for bit."""
    train_interrupted(cls, cfg, run_dir, stop_after)
    resumed = cls()
    resumed.train(cfg, run_dir, resume=True)
    for (name, a), b in zip(full_model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for kind, f in resumed.embed(cfg, run_dir, "lt_train").items():
        np.testing.assert_array_equal(f, full_feats[kind])
