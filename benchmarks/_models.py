"""Small reference models for the benchmarks.

ResNet-20 for CIFAR (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2):
three stages of three basic blocks with 16/32/64 channels and parameter-free "option A"
shortcuts (stride-2 subsampling plus zero-padded channels), about 0.27 M parameters. This is the
CIFAR-10 network of the CREST paper (Yang, Kang, Mirzasoleiman, ICML 2023).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["resnet20"]


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes - in_planes if (stride != 1 or in_planes != planes) else 0
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad or self.stride != 1:
            # option A: subsample and zero-pad the channels, no parameters
            shortcut = x[:, :, :: self.stride, :: self.stride]
            half = self.pad // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, half, self.pad - half))
        return F.relu(out + shortcut)


class ResNetCifar(nn.Module):
    """CIFAR ResNet with 6n+2 layers (n=3: ResNet-20)."""

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth should be 6n+2, but got depth={depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet20(num_classes: int = 10) -> ResNetCifar:
    """ResNet-20 for 32×32 inputs."""
    return ResNetCifar(20, num_classes)
