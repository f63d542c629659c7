"""Width-scalable VGG with batch normalisation for small images (Simonyan & Zisserman 2015, "Very Deep Convolutional
Networks for Large-Scale Image Recognition"; batch norm after every convolution, as torchvision's `vgg*_bn`): five
blocks of 3x3 convolutions, each ended by a 2x2 max-pool, so a 32x32 image leaves the last block at 1x1, then one
linear classifier (the usual CIFAR head). Its split points are the ends of the five blocks."""

from __future__ import annotations

import torch
from torch import nn

from engine.errors import UserError
from engine.models.base import MODELS, SplitPoint, named_points, scaled

# output channels of each block's convolutions (configurations A and D of Simonyan & Zisserman, Table 1)
CONFIGS = {"vgg11_bn": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
           "vgg16_bn": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))}


def block(in_ch: int, channels: tuple[int, ...]) -> nn.Sequential:
    """3x3 convolution, batch norm and ReLU for each of `channels`, then a 2x2 max-pool."""
    layers: list[nn.Module] = []
    for ch in channels:
        layers += [nn.Conv2d(in_ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
        in_ch = ch
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class CifarVGG(nn.Module):
    """VGG-BN (Simonyan & Zisserman 2015) for small images: its blocks (`config`), global average pooling (1x1 at
    32x32) and a linear classifier; every channel count times `width`."""

    stages = tuple((f"block{i}", f"block{i}") for i in range(1, 6))
    split_points = named_points(*(SplitPoint(f"block{i}", f"block{i}", True, f"after block {i} (max-pool)")
                                  for i in range(1, 6)))

    def __init__(self, config: str, width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if not width > 0:
            raise UserError(f"width must be > 0, got {width}; try --width 0.25")
        self.width = width
        prev = in_channels
        for i, channels in enumerate(CONFIGS[config]):
            scaled_channels = tuple(scaled(c, width) for c in channels)
            self.add_module(f"block{i + 1}", block(prev, scaled_channels))
            prev = scaled_channels[-1]
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 6):
            x = getattr(self, f"block{i}")(x)
        return self.head(x)


@MODELS.register("vgg11_bn")
def vgg11_bn(width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG11 with batch norm (configuration A)."""
    return CifarVGG("vgg11_bn", width, num_classes, in_channels)


@MODELS.register("vgg16_bn")
def vgg16_bn(width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG16 with batch norm (configuration D)."""
    return CifarVGG("vgg16_bn", width, num_classes, in_channels)


vgg11_bn.split_points = vgg16_bn.split_points = CifarVGG.split_points
