"""Models of the examples: a small CNN, ResNet-20 (CIFAR-10) and the CIFAR ResNet-18 (CIFAR-100),
and the end-to-end benchmark's second family, an MLP without BatchNorm.

Each ends in an ``nn.Linear`` classifier (``model.fc`` for the CNNs, the last layer of the MLP),
which the quadratic-loss monitor models in closed form.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-maxpool blocks and a linear classifier (28×28 or 32×32 inputs)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.fc(self.features(x))
        return logits


def mlp(in_features: int = 784, num_classes: int = 10) -> nn.Sequential:
    """A 784-256-128-10 MLP with ReLUs and no normalisation (28×28 inputs, flattened)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 256), nn.ReLU(),
        nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )  # fmt: skip


class _BasicBlock(nn.Module):
    """3×3-3×3 residual block; ``option="A"``: parameter-free shortcut (subsample, zero-pad)."""

    def __init__(self, in_planes: int, planes: int, stride: int, option: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes
        self.shortcut: nn.Module = nn.Identity()
        if option == "B" and (stride != 1 or in_planes != planes):
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.option = option

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.option == "A" and (self.stride != 1 or self.pad):
            x = x[:, :, :: self.stride, :: self.stride]
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            x = self.shortcut(x)
        return F.relu(out + x)


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs: a 3×3 stem (no max-pool), stages of basic blocks, global pool."""

    def __init__(
        self,
        blocks: tuple[int, ...],
        widths: tuple[int, ...],
        *,
        option: str,
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        in_planes = widths[0]
        for stage, (n, planes) in enumerate(zip(blocks, widths, strict=True)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(_BasicBlock(in_planes, planes, stride, option))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        logits: Tensor = self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
        return logits


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 (He et al., CVPR 2016, §4.2): 3×3 blocks, 16/32/64 channels, option-A
    shortcuts, about 0.27 M parameters; the CREST paper's CIFAR-10 network."""
    return CifarResNet(
        (3, 3, 3), (16, 32, 64), option="A", num_classes=num_classes, in_channels=in_channels
    )


def resnet18(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """The usual CIFAR ResNet-18: 2×4 basic blocks, 64–512 channels, 1×1 projection shortcuts
    (option B), about 11 M parameters; the CREST paper's CIFAR-100 network."""
    return CifarResNet(
        (2, 2, 2, 2),
        (64, 128, 256, 512),
        option="B",
        num_classes=num_classes,
        in_channels=in_channels,
    )
