"""Learning-rate and momentum schedules (pure functions of the step)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, base_lr: float,
                  final_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to `base_lr` over `warmup_steps`, then cosine to `final_lr`.

    ConMix/SimCLR form (conmix.md section 4): lr(s) = base * s / w for s < w, else
    final + (base - final) * (1 + cos(pi (s - w) / (T - w))) / 2. The first update uses s = 1.
    """
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
