"""A 1D ResNet with BatchNorm for single-lead heartbeats (the xresnet1d family in small).

``stem (conv 7, BatchNorm, ReLU) -> residual blocks -> global average pool -> Linear``;
each block is two ``conv 5 -> BatchNorm`` layers with an identity shortcut, and a max
pool halves the length between stages. With the default width (16 channels) it has
5,477 parameters and fits ECG5000's 2,500 training beats in a few epochs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock1d", "ResNet1d", "make_model"]


class BasicBlock1d(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))`` at constant width."""

    def __init__(self, channels: int, kernel_size: int = 5) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=padding, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=padding, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class ResNet1d(nn.Module):
    def __init__(self, in_channels: int, n_classes: int, width: int, stages: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(in_channels, width, 7, padding=3, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.stages = nn.ModuleList(BasicBlock1d(width) for _ in range(stages))
        self.pool = nn.MaxPool1d(2)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for index, block in enumerate(self.stages):
            if index:
                h = self.pool(h)
            h = block(h)
        return self.head(h.mean(dim=2))


def make_model(
    in_channels: int = 1, n_classes: int = 5, width: int = 16, stages: int = 2
) -> nn.Module:
    """An untrained `ResNet1d` (logits ``(N, n_classes)`` for cross-entropy)."""
    return ResNet1d(in_channels, n_classes, width, stages)
