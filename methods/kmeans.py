"""K-means on raw pixels: the "K-means" row that clustering papers list (no training)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import CellConfig
from harness.method import Method, load_cell_data
from harness.registry import register_method


@dataclass(frozen=True)
class KMeansParams:
    """No hyper-parameters beyond the evaluation protocol's k-means settings."""


@register_method("kmeans")
class RawPixelKMeans(Method):
    description = "k-means on raw pixels scaled to [0, 1] (the papers' K-means row)"
    Params = KMeansParams
    kmeans_metric = {"pixels": "euclidean"}
    resources = "cpu"
    deterministic = True  # pixels and the eval protocol's k-means seeds: no training seed

    def train(self, cfg: CellConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
        return {"epochs": 0, "seconds": 0.0, "final_loss": None}

    def embed(self, cfg: CellConfig, run_dir: Path, split: str) -> dict[str, np.ndarray]:
        images = load_cell_data(cfg, split).images
        return {"pixels": images.reshape(len(images), -1).float().numpy() / 255.0}
