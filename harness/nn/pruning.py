"""SDCLR blocks: dual batch-norm and a network with a magnitude-pruned twin (simclr_sdclr.md 5).

`PrunableNet` wraps a dense network whose norm layers are `DualBatchNorm`s. Its pruned forward
runs the same module with every conv weight replaced by `weight * mask` (through
`torch.func.functional_call`, so the stored weights are never modified) and every dual BN switched
to its "prune" set. Both branches therefore share all unmasked weights, masked weights get exactly
zero gradient from the pruned branch, and the dense forward never sees a mask. Masks are boolean
buffers, so checkpoints hold them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

from harness.errors import HarnessError


class DualBatchNorm(nn.Module):
    """Two batch-norms: "nonprune" for the dense branch, "prune" for the pruned one."""

    bn_class: ClassVar[type[nn.Module]] = nn.BatchNorm2d

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__()
        self.nonprune = self.bn_class(num_features, **kwargs)
        self.prune = self.bn_class(num_features, **kwargs)
        self.use_prune = False  # set by `PrunableNet.pruned_branch()`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prune(x) if self.use_prune else self.nonprune(x)


class DualBatchNorm1d(DualBatchNorm):
    """`DualBatchNorm` of two `nn.BatchNorm1d` (projection heads)."""

    bn_class = nn.BatchNorm1d


class DualBatchNorm2d(DualBatchNorm):
    """`DualBatchNorm` of two `nn.BatchNorm2d` (backbones)."""

    bn_class = nn.BatchNorm2d


def conv_weight_names(net: nn.Module) -> list[str]:
    """Parameter names of every conv weight (stem, block and downsample convs; no Linear)."""
    return [f"{name}.weight" for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]


def magnitude_threshold(weights: list[torch.Tensor], prune_percent: float) -> torch.Tensor:
    """Global threshold: the value at index ceil(p * n) of all |w| sorted ascending.

    The index is clamped to n - 1 (p = 1 keeps only the largest weights), as upstream SDCLR.
    """
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    index = min(math.ceil(prune_percent * flat.numel()), flat.numel() - 1)
    return flat.float().kthvalue(index + 1).values  # kthvalue is 1-based


class PrunableNet(nn.Module):
    """A dense network and its pruned twin; `forward(x, pruned=False)` returns the net's output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.masked_names = conv_weight_names(net)
        if not self.masked_names:
            raise ValueError("PrunableNet needs a network with Conv2d layers to prune")
        for i, name in enumerate(self.masked_names):
            weight = net.get_parameter(name)
            self.register_buffer(f"mask{i}", torch.ones_like(weight, dtype=torch.bool))
        self.dual_norms = [m for m in net.modules() if isinstance(m, DualBatchNorm)]

    def masks(self) -> list[torch.Tensor]:
        """The boolean masks, in the order of `masked_names`."""
        return [getattr(self, f"mask{i}") for i in range(len(self.masked_names))]

    @torch.no_grad()
    def update_masks(self, prune_percent: float) -> None:
        """Recompute every mask from the current dense weights: keep |w| >= the global threshold."""
        if not 0.0 <= prune_percent <= 1.0:
            raise HarnessError(f"prune_percent = {prune_percent}: use a fraction in [0, 1]")
        weights = [self.net.get_parameter(name) for name in self.masked_names]
        threshold = magnitude_threshold(weights, prune_percent)
        for mask, weight in zip(self.masks(), weights):
            mask.copy_(weight.detach().abs() >= threshold)

    def kept_fraction(self) -> float:
        """Fraction of conv weights the pruned branch keeps (host sync; for logs and tests)."""
        kept = sum(int(m.sum()) for m in self.masks())
        return kept / sum(m.numel() for m in self.masks())

    @contextlib.contextmanager
    def pruned_branch(self) -> Iterator[None]:
        """Switch every dual batch-norm to its "prune" set for the duration of the block."""
        for norm in self.dual_norms:
            norm.use_prune = True
        try:
            yield
        finally:
            for norm in self.dual_norms:
                norm.use_prune = False

    def forward(self, x: torch.Tensor, pruned: bool = False) -> Any:
        if not pruned:
            return self.net(x)
        masked = {name: self.net.get_parameter(name) * mask
                  for name, mask in zip(self.masked_names, self.masks())}
        with self.pruned_branch():
            return functional_call(self.net, masked, (x,))
