"""An Inception-BN-style network for 8x8 digits, at any width multiplier inside its modules.

Standard: stem 32, module A (1x1 16 | 1x1 16 -> 3x3 24 | pool -> 1x1 8), 2x2 max pool, module B
(24 | 24 -> 32 | 16), global average pool, linear 10. The paper's narrow teacher scales the
channels inside the modules (x0.3); the stem stays.
"""

from __future__ import annotations

import torch
from torch import nn

STANDARD = {"a": (16, 16, 24, 8), "b": (24, 24, 32, 16)}


def conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Inception(nn.Module):
    def __init__(self, cin: int, b1: int, b3r: int, b3: int, bp: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, b1, 1)
        self.b3 = nn.Sequential(conv_bn(cin, b3r, 1), conv_bn(b3r, b3, 3))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, bp, 1))
        self.out_channels = b1 + b3 + bp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.bp(x)], 1)


class DigitsInception(nn.Module):
    def __init__(self, width: float = 1.0, stem: int = 32) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(1, round(c * width))

        self.stem = conv_bn(1, stem, 3)
        self.a = Inception(stem, *(w(c) for c in STANDARD["a"]))
        self.pool = nn.MaxPool2d(2)
        self.b = Inception(self.a.out_channels, *(w(c) for c in STANDARD["b"]))
        self.head = nn.Linear(self.b.out_channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(self.pool(self.a(self.stem(x))))
        return self.head(x.mean((2, 3)))


# where Net2DeeperNet adds an identity 3x3 conv (+ ReLU): after the 3x3 branch of every module
DEEPEN_AT = ["a.b3.1.2", "b.b3.1.2"]
