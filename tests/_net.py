"""A small network the gradient and proxy tests share (BatchNorm and dropout: modes matter)."""

from __future__ import annotations

from torch import Tensor, nn


class Net(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh())
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.body(x)))
