"""Width-scalable MobileNetV2 for small images (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks"), with the usual CIFAR stem: the first convolution and the second bottleneck sequence keep stride 1,
so a 32x32 image reaches the last sequences at 4x4. Its split points are the ends of the seven bottleneck sequences
of the paper's Table 2 (coarse where the resolution or the sequence's role changes) and the last 1x1 convolution."""

from __future__ import annotations

import torch
from torch import nn

from engine.errors import UserError
from engine.models.base import MODELS, SplitPoint, named_points, scaled

# (expansion t, output channels c, blocks n, first stride s) of each bottleneck sequence (Sandler et al., Table 2),
# the second sequence at stride 1 for 32x32 inputs
SEQUENCES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))
COARSE = (2, 3, 5, 7)  # the sequences whose ends are coarse split points: the last of each resolution


def conv_bn(in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    """Convolution (no bias), batch norm and, unless `relu` is False (a linear bottleneck), ReLU6."""
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_ch)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if relu else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expansion (t > 1), 3x3 depthwise convolution, linear 1x1 projection; the input is added back when the
    block keeps its shape."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers = [conv_bn(in_ch, hidden)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, out_ch, relu=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


@MODELS.register("mobilenetv2")
class CifarMobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) for small images: a 3x3 stride-1 stem of 32 channels, seven bottleneck
    sequences, a 1x1 convolution to 1280 channels, average pooling and a linear classifier; every channel count
    times `width`."""

    stages = (("stem", "stem"), *((f"bottleneck{i + 1}", f"bottleneck{i + 1}") for i in range(len(SEQUENCES))),
              ("conv_last", "conv_last"))
    split_points = named_points(
        SplitPoint("stem", "stem", True, "after the first convolution"),
        *(SplitPoint(f"bottleneck{i + 1}", f"bottleneck{i + 1}", i + 1 in COARSE, f"after bottleneck sequence {i + 1}")
          for i in range(len(SEQUENCES))),
        SplitPoint("conv_last", "conv_last", False, "after the last 1x1 convolution (before pooling)"),
    )

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if not width > 0:
            raise UserError(f"width must be > 0, got {width}; try --width 0.25")
        self.width = width
        prev = scaled(32, width)
        self.stem = conv_bn(in_channels, prev, 3)
        for i, (t, c, n, s) in enumerate(SEQUENCES):
            out = scaled(c, width)
            blocks = [InvertedResidual(prev if j == 0 else out, out, s if j == 0 else 1, t) for j in range(n)]
            self.add_module(f"bottleneck{i + 1}", nn.Sequential(*blocks))
            prev = out
        last = scaled(1280, width)
        self.conv_last = conv_bn(prev, last)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(len(SEQUENCES)):
            x = getattr(self, f"bottleneck{i + 1}")(x)
        return self.head(self.conv_last(x))
