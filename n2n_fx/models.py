"""Small built-in models: the demo network and the hand-written architectures the tests grow.

Each factory returns (model, example_input). They are deliberately small (they run in
milliseconds on a CPU) but carry the structures that break pruning tools: branches into concat,
residual adds with downsample shortcuts, repeated concat, depthwise convs, gating mul, channel
shuffle, and conv features flattened into a classifier.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    """ResNet's projection shortcut when the residual changes shape, else None (identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class MLP(nn.Module):
    def __init__(self, d_in: int = 12, hidden: int = 16, d_out: int = 5) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(d_in, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, d_out)
        self.bn = nn.BatchNorm1d(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = torch.tanh(self.bn(self.fc2(x)))
        return self.fc3(x)


class VGGish(nn.Module):
    def __init__(self, c: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, c), nn.MaxPool2d(2), conv_bn(c, 2 * c), conv_bn(2 * c, 2 * c),
                                      nn.MaxPool2d(2), nn.Dropout(0.1))
        self.classifier = nn.Sequential(nn.Linear(2 * c * 4 * 4, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNetish(nn.Module):
    def __init__(self, c: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, c)
        self.layer1 = nn.Sequential(Block(c, c, 1), Block(c, c, 1))
        self.layer2 = nn.Sequential(Block(c, 2 * c, 2), Block(2 * c, 2 * c, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class InceptionModule(nn.Module):
    """Four branches into a concat (1x1; 1x1-3x3; 1x1-3x3-3x3; pool-1x1), Inception-BN style."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, d3r: int, d3: int, cp: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, c1, 1)
        self.b2 = nn.Sequential(conv_bn(cin, c3r, 1), conv_bn(c3r, c3))
        self.b3 = nn.Sequential(conv_bn(cin, d3r, 1), conv_bn(d3r, d3), conv_bn(d3, d3))
        self.b4 = nn.Sequential(nn.AvgPool2d(3, 1, 1), conv_bn(cin, cp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class Inceptionish(nn.Module):
    def __init__(self, width: float = 1.0, classes: int = 10, in_ch: int = 3, spatial: int = 8) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(1, round(c * width))

        self.stem = conv_bn(in_ch, w(16))
        self.inc1 = InceptionModule(w(16), w(8), w(8), w(12), w(4), w(6), w(6))
        c1 = w(8) + w(12) + w(6) + w(6)
        self.inc2 = InceptionModule(c1, w(12), w(8), w(16), w(4), w(8), w(8))
        c2 = w(12) + w(16) + w(8) + w(8)
        self.proj = nn.Sequential(nn.Conv2d(c2, c1, 1, bias=False), nn.BatchNorm2d(c1))
        self.down = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c1 * (spatial // 2) ** 2, w(32))
        self.fc2 = nn.Linear(w(32), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a = self.inc1(x)
        b = F.relu(self.proj(self.inc2(a)) + a)  # residual add across two inception modules
        b = self.down(b)
        b = torch.flatten(b, 1)  # conv features into a Linear: the stride map
        return self.fc2(F.relu(self.fc1(b)))


class DenseNetish(nn.Module):
    def __init__(self, c: int = 8, growth: int = 4, layers: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.layers = nn.ModuleList()
        ch = c
        for _ in range(layers):
            self.layers.append(nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU(), nn.Conv2d(ch, growth, 3, padding=1)))
            ch += growth
        self.head = nn.Linear(ch, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)  # repeated concat
        return self.head(x.mean((2, 3)))


class MobileBlock(nn.Module):
    """MobileNet-v2 inverted residual: 1x1 expand, depthwise 3x3, 1x1 project, residual add."""

    def __init__(self, c: int = 8, expand: int = 3) -> None:
        super().__init__()
        h = c * expand
        self.expand = conv_bn(c, h, 1)
        self.dw = conv_bn(h, h, 3, groups=h)
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.dw(self.expand(x)))


class MobileNetish(nn.Module):
    def __init__(self, c: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, c)
        self.blocks = nn.Sequential(MobileBlock(c), MobileBlock(c))
        self.dw_mult = nn.Conv2d(c, 2 * c, 3, padding=1, groups=c)  # depthwise with multiplier 2
        self.grouped = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = F.relu(self.grouped(F.relu(self.dw_mult(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int = 16, r: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.conv = conv_bn(3, c)
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        x = x * s  # gating: the gate's space is the gated space
        return self.head(x.mean((2, 3)))


class ChannelShuffle(nn.Module):
    """ShuffleNet's view/transpose/view: the inference must freeze it (never silently widen)."""

    def __init__(self, c: int = 8, groups: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.groups = groups
        self.conv1 = nn.Conv2d(3, c, 1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=groups)
        self.conv3 = nn.Conv2d(c, c, 1)
        self.side = nn.Conv2d(3, c, 1)
        self.head = nn.Linear(2 * c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        n, c, h, w = y.shape
        y = y.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = F.relu(self.conv3(F.relu(self.conv2(y))))
        z = F.relu(self.side(x))
        return self.head(torch.cat([y, z], 1).mean((2, 3)))


class ConvFlattenLinear(nn.Module):
    def __init__(self, c: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Linear(c * 4 * 4, 12), nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = x.reshape(-1, 96)  # a literal size the student must rewrite
        return self.fc2(F.relu(self.fc1(x)))


ZOO: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "mlp": lambda: (MLP(), torch.randn(6, 12)),
    "vgg": lambda: (VGGish(), torch.randn(2, 3, 16, 16)),
    "resnet": lambda: (ResNetish(), torch.randn(2, 3, 16, 16)),
    "inception": lambda: (Inceptionish(), torch.randn(2, 3, 8, 8)),
    "densenet": lambda: (DenseNetish(), torch.randn(2, 3, 8, 8)),
    "mobilenet": lambda: (MobileNetish(), torch.randn(2, 3, 8, 8)),
    "se": lambda: (SqueezeExcite(), torch.randn(2, 3, 8, 8)),
    "shuffle": lambda: (ChannelShuffle(), torch.randn(2, 3, 8, 8)),
    "flatten": lambda: (ConvFlattenLinear(), torch.randn(2, 3, 8, 8)),
}


def demo_model() -> tuple[nn.Module, torch.Tensor]:
    """The README's default model: an Inception-BN-style network (seeded random weights)."""
    torch.manual_seed(0)
    return Inceptionish(), torch.randn(4, 3, 8, 8)


# ---------------------------------------------------------------------------- full-size models
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Like(nn.Module):
    """ResNet-50's layout (bottlenecks 3-4-6-3, widths 64..2048, 25.6M parameters)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(cin, width, stride if b == 0 else 1))
                cin = width * 4
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


GOOGLENET = [  # (cin, c1, c3r, c3, d3r, d3, pool proj): Inception-BN's module widths
    (192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), "pool",
    (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64), (512, 128, 128, 256, 24, 64, 64),
    (512, 112, 144, 288, 32, 64, 64), (528, 256, 160, 320, 32, 128, 128), "pool",
    (832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128),
]


class InceptionBNLike(nn.Module):
    """GoogLeNet / Inception-BN's nine inception modules with BN and double 3x3 branches."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), conv_bn(64, 64, 1),
                                  conv_bn(64, 192, 3), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(*[nn.MaxPool2d(3, 2, 1) if c == "pool" else InceptionModule(*c)
                                      for c in GOOGLENET])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))
