"""Digit recipes: the per-dataset settings every method uses on grey handwritten digits.

Build choice (issue 17), chosen by measurement on mnist5k IR 10 at 16 px with the `cpu` budget
(README, "Digit recipes", has the table of variants and what each gave):
- no horizontal flip: a mirrored digit is another shape (or none);
- the methods' own random-resized-crop scales: weaker crops (min scale 0.3 or 0.5) made the
  contrastive task too easy and the features worse (SimCLR NMI 49 instead of 59 at 50 epochs);
- brightness and contrast jitter 0.4 (p 0.8): without it SimCLR fell from NMI 61 to 33 (the views
  match on ink intensity otherwise); 0.6 was worse than 0.4;
- saturation, hue and random grayscale off: on grey images they are identities, so turning them
  off changes no view and saves the HSV round trip.
Methods add their own digit settings (e.g. a temperature) through `digit_settings(**settings)`.
"""

from __future__ import annotations

from typing import Any

DIGIT_DATASETS = ("mnist5k", "mnist", "digits")
DIGIT_AUGMENT: dict[str, Any] = {"flip_p": 0.0, "jitter": [0.4, 0.4, 0.0, 0.0], "grayscale_p": 0.0}


def digit_settings(**settings: Any) -> dict[str, dict[str, Any]]:
    """`dataset_params` entries of the digit datasets: the digit augmentation plus `settings`."""
    return {name: {"augment": dict(DIGIT_AUGMENT), **settings} for name in DIGIT_DATASETS}
