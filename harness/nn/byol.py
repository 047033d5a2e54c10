"""BYOL-style online/target networks with a predictor, shared by `byol`, `propos` and `hadis`.

Spec: methods/propos_hadis.md section 1. The online network is backbone -> projector, followed by
a predictor; the target network is a copy of backbone + projector that receives no gradient and
follows the online parameters by an exponential moving average. Only parameters are averaged:
the target's BatchNorm running statistics come from its own train-mode forwards.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from harness.nn.heads import mlp


def byol_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear(in, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, out) (projector, predictor)."""
    return mlp([in_dim, hidden, out_dim])


class BYOLNetwork(nn.Module):
    """Online backbone + projector, predictor, and the EMA target backbone + projector."""

    def __init__(self, backbone: nn.Module, backbone_dim: int, hidden: int, feat_dim: int) -> None:
        super().__init__()
        self.online_backbone = backbone
        self.online_projector = byol_head(backbone_dim, hidden, feat_dim)
        self.predictor = byol_head(feat_dim, hidden, feat_dim)
        for m in self.predictor.modules():  # upstream predictor init: N(0, 0.01^2), zero bias
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.online_projector)
        for p in self.target_parameters():
            p.requires_grad_(False)

    def online_parameters(self) -> list[nn.Parameter]:
        """Online backbone + projector parameters, in the same order as `target_parameters`."""
        return [*self.online_backbone.parameters(), *self.online_projector.parameters()]

    def target_parameters(self) -> list[nn.Parameter]:
        """Target backbone + projector parameters (EMA copies of `online_parameters`)."""
        return [*self.target_backbone.parameters(), *self.target_projector.parameters()]

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """xi <- m * xi + (1 - m) * theta on parameters only (buffers keep their own statistics)."""
        # torch._foreach_lerp_ is the fused form used by timm's EMA: xi + (1 - m)(theta - xi).
        torch._foreach_lerp_(self.target_parameters(), self.online_parameters(), 1.0 - momentum)


def ema_momentum(step: int, total_steps: int, base: float, increase: bool) -> float:
    """EMA momentum at optimiser step `step` (1-based, like upstream's iteration counter).

    Constant `base`, or with `increase` the cosine ramp m = 1 - (1 - base)(cos(pi t / T) + 1) / 2,
    which starts at `base` (t = 0) and reaches 1 at t = T.
    """
    if not increase:
        return base
    progress = min(step / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
