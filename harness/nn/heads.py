"""Projection heads (MLPs) shared by the methods."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

NormLayer = Callable[[int], nn.Module]


def mlp(dims: Sequence[int], *, bias: Sequence[bool] | bool = True, bn_last: bool = False,
        norm_layer: NormLayer = nn.BatchNorm1d, hidden_bn: bool = True) -> nn.Sequential:
    """Linear layers through `dims`, BN + ReLU between them, optional BN after the last.

    Example (ConMix head): `mlp([512, 512, 512, 128], bias=[True, False, False], bn_last=True)`.
    """
    n = len(dims) - 1
    biases = [bias] * n if isinstance(bias, bool) else list(bias)
    layers: list[nn.Module] = []
    for i in range(n):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=biases[i]))
        if i < n - 1:
            if hidden_bn:
                layers.append(norm_layer(dims[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        elif bn_last:
            layers.append(norm_layer(dims[i + 1]))
    return nn.Sequential(*layers)
