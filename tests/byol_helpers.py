"""Shared helpers for the BYOL-family tests (byol, propos, hadis): cells, batches, resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resume_helpers import assert_resume_matches

from harness.config import CellConfig
from harness.method import Batch
from harness.registry import method_class


def cell(method: str, tmp_path: Path, dataset: str = "synthetic", **overrides: Any) -> CellConfig:
    """A test-budget cell; digits runs at IR 100 and 16 px to stay small on CPU."""
    small = dataset == "digits"
    cls = method_class(method)
    return CellConfig(method=method, dataset=dataset, ir=100 if small else 10, seed=0, device="cpu",
                      params=cls.resolve_params(dataset, overrides, budget="test"),
                      data={"image_size": 16} if small else {}, data_root=str(tmp_path / "data"))


def ready(method: str, tmp_path: Path, **overrides: Any) -> Any:
    """A set-up (untrained) method instance on the synthetic test cell."""
    m = method_class(method)()
    m.setup(cell(method, tmp_path, **overrides), tmp_path / "run")
    return m


def make_batch(m: Any, epoch: int, seed: int = 0, size: int = 32) -> Batch:
    """Two augmented views of the first `size` images, as the training loop builds them."""
    from harness.data.augment import augment

    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(size)
    recipe = m.augment_recipe()
    x = m.images[idx]
    return Batch(augment(x, recipe, gen), augment(x, recipe, gen), idx, epoch, 1, gen)


def new_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def check_train_and_resume(method: str, tmp_path: Path, stop_after: int, **overrides: Any) -> None:
    """Uninterrupted run vs. a run killed after epoch `stop_after` and resumed by a fresh
    instance: identical final weights and features (bit for bit on CPU)."""
    cls = method_class(method)
    cfg = cell(method, tmp_path, **overrides)
    full = cls()
    summary = full.train(cfg, new_dir(tmp_path / "full"), resume=False)
    assert summary["epochs"] == cfg.params["epochs"] and math.isfinite(summary["final_loss"])
    feats = full.embed(cfg, tmp_path / "full", "lt_train")
    assert list(feats) == ["projector", "backbone"]
    assert feats["projector"].shape == (len(full.data), cfg.params["feat_dim"])
    np.testing.assert_allclose(np.linalg.norm(feats["projector"], axis=1), 1.0, rtol=1e-5)

    assert_resume_matches(cls, cfg, new_dir(tmp_path / "interrupted"), stop_after, full.model, feats)


def check_trains_on_digits(method: str, tmp_path: Path) -> None:
    """A short real-data run: finite loss and finite, normalised features."""
    cls = method_class(method)
    cfg = cell(method, tmp_path, dataset="digits", epochs=2, batch_size=64)
    m = cls()
    assert math.isfinite(m.train(cfg, new_dir(tmp_path / "run"), resume=False)["final_loss"])
    feats = m.embed(cfg, tmp_path / "run", "lt_train")["projector"]
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
