"""A tiny generated dataset for fast tests: 10 classes of coloured oriented gratings.

Deterministic (fixed generator), so its manifests and runs are reproducible. Each class has its
own orientation, frequency and colour; samples vary in phase and noise.
"""

from __future__ import annotations

import math

import numpy as np

from harness.data.base import DatasetPlugin
from harness.registry import register_dataset

POOL_PER_CLASS = 40


@register_dataset("synthetic")
class Synthetic(DatasetPlugin):
    description = "generated coloured gratings, 10 classes x 40, 16 px (fast tests)"
    num_classes = 10
    n_max = 40
    image_size = 16
    pool_description = "generated, 40 per class, classes interleaved"
    class_names = tuple(f"class{i}" for i in range(10))
    needs_files = False

    def pool_labels(self) -> np.ndarray:
        return np.tile(np.arange(self.num_classes), POOL_PER_CLASS).astype(np.int64)

    def load_images(self, indices: np.ndarray) -> np.ndarray:
        labels = self.pool_labels()
        rng = np.random.default_rng(0)
        phases = rng.uniform(0, 2 * math.pi, size=len(labels))
        noise_seeds = rng.integers(0, 2**31, size=len(labels))
        s = self.image_size
        yy, xx = np.meshgrid(np.linspace(-1, 1, s), np.linspace(-1, 1, s), indexing="ij")
        out = np.empty((len(indices), s, s, 3), np.uint8)
        for k, i in enumerate(np.asarray(indices)):
            c = int(labels[i])
            angle = math.pi * c / self.num_classes
            freq = 2.0 + (c % 3)
            wave = np.sin(freq * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) + phases[i])
            colour = np.array([(c * 37) % 255, (c * 91) % 255, (c * 151) % 255]) / 255.0
            img = 0.5 + 0.4 * wave[..., None] * (0.3 + 0.7 * colour)
            img += np.random.default_rng(noise_seeds[i]).normal(0, 0.05, img.shape)
            out[k] = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        return out
