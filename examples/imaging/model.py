"""A small 2D ResNet with BatchNorm for image patches (ResNet-18's design in miniature).

``stem (conv 3x3, BatchNorm, ReLU) -> residual blocks (max pool between) -> global
average pool -> Linear``; each block is two ``conv 3x3 -> BatchNorm`` layers with an
identity shortcut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock2d", "ResNet2d", "make_model"]


class BasicBlock2d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class ResNet2d(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, width: int, stages: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.stages = nn.ModuleList(BasicBlock2d(width) for _ in range(stages))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.stages:
            h = block(self.pool(h))
        return self.head(h.mean(dim=(2, 3)))


def make_model(
    in_channels: int = 3, n_classes: int = 2, width: int = 8, stages: int = 2
) -> nn.Module:
    """An untrained `ResNet2d` (logits ``(N, n_classes)`` for cross-entropy)."""
    return ResNet2d(in_channels, n_classes, width, stages)
