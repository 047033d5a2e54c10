"""scikit-learn's handwritten digits: real data that ships with the package (no download).

1797 grey 8x8 images of the digits 0-9 (174 to 183 per class), upscaled bilinearly to the
configured size and repeated to 3 channels. Build choice: n_max = 174, the smallest class, so
every IR (IR 1 included) follows the LT rule exactly; IR 1 is the balanced 1740-image set.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from harness.data.base import DatasetPlugin
from harness.registry import register_dataset


@register_dataset("digits")
class Digits(DatasetPlugin):
    description = "scikit-learn handwritten digits (real, 10 classes, ships with sklearn; no download)"
    num_classes = 10
    n_max = 174
    image_size = 32
    pool_description = "sklearn load_digits (1797 images)"
    class_names = tuple(str(i) for i in range(10))
    needs_files = False

    def pool_labels(self) -> np.ndarray:
        return load_digits().target.astype(np.int64)

    def load_images(self, indices: np.ndarray) -> np.ndarray:
        raw = load_digits().images[indices].astype(np.float32) / 16.0  # (n, 8, 8) in [0, 1]
        x = torch.from_numpy(raw)[:, None]
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False)
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
        return x.permute(0, 2, 3, 1).contiguous().numpy()
