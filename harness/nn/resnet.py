"""ResNet backbones with CIFAR and ImageNet stems, a width/depth knob and a pluggable norm layer.

ResNet-18 = BasicBlock, layers (2, 2, 2, 2), 512-d output after global average pooling
(simclr_sdclr.md section 2). `width` scales the channel counts (64 = standard) so CPU runs can be
small; `norm_layer` lets SDCLR plug in its dual batch-norm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]

ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm: NormLayer) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), norm(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, norm: NormLayer) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out_ch, 1, stride, bias=False), norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk without the classifier; `forward` returns pooled features (B, out_dim)."""

    def __init__(self, arch: str = "resnet18", stem: str = "cifar", width: int = 64,
                 layers: Sequence[int] | None = None, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown backbone {arch!r}; choose one of {sorted(ARCHS)}")
        kind, default_layers = ARCHS[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        layers = tuple(layers) if layers is not None else default_layers
        if stem == "cifar":  # 3x3 stride-1 conv, no max-pool
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        elif stem == "imagenet":  # 7x7 stride-2 conv + 3x3 stride-2 max-pool
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            raise ValueError(f"unknown stem {stem!r}; choose 'cifar' or 'imagenet'")
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], width
        for i, n_blocks in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1, norm_layer))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = (stages + [nn.Identity()] * 4)[:4]
        self.out_dim = cin
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.forward_maps(x)), 1)
