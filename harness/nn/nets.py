"""The ConMix-recipe network shared by SimCLR, SDCLR and ConMix (simclr_sdclr.md section 2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from harness.nn.heads import mlp
from harness.nn.resnet import ResNet


class ContrastiveNet(nn.Module):
    """Backbone + projection head; `forward` returns (backbone features, head output)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return h, self.head(h)


def conmix_network(arch: str = "resnet18", stem: str = "cifar", width: int = 64,
                   layers: Sequence[int] | None = None, proj_dim: int = 128,
                   norm2d: Callable[[int], nn.Module] = nn.BatchNorm2d,
                   norm1d: Callable[[int], nn.Module] = nn.BatchNorm1d) -> ContrastiveNet:
    """ResNet + head Linear(d, d, bias) BN ReLU Linear(d, d) BN ReLU Linear(d, proj_dim) BN."""
    backbone = ResNet(arch, stem, width, layers, norm_layer=norm2d)
    d = backbone.out_dim
    head = mlp([d, d, d, proj_dim], bias=[True, False, False], bn_last=True, norm_layer=norm1d)
    return ContrastiveNet(backbone, head)
