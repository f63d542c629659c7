"""Width-scalable CIFAR ResNet18 (He et al. 2016, CIFAR variant: 3x3 stride-1 stem, no max-pool) and its
split-point registry. The split points are the ends of the paper's building blocks (Shao & Zhang 2020, Fig. 1),
plus every BasicBlock boundary as a finer point."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import UserError
from engine.registry import Registry

MODELS: Registry[type[nn.Module]] = Registry("model")


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity or 1x1-projection shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Stem(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class Head(nn.Sequential):
    def __init__(self, in_ch: int, num_classes: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes))


@MODELS.register("resnet18")
class CifarResNet18(nn.Module):
    """ResNet18 for small images: 4 stages of 2 BasicBlocks, 64/128/256/512 channels at width 1.0."""

    stage_names = ("conv2_x", "conv3_x", "conv4_x", "conv5_x")

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if not width > 0:
            raise UserError(f"width must be > 0, got {width}; try --width 0.25")
        chans = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.width = width
        self.stem = Stem(in_channels, chans[0])
        layers, prev = [], chans[0]
        for i, ch in enumerate(chans):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(prev, ch, stride), BasicBlock(ch, ch, 1)))
            prev = ch
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.head = Head(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each residual branch (Goyal et al. 2017)
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def units(self) -> list[tuple[str, nn.Module]]:
        """The model as an ordered chain of units; a split point cuts this chain."""
        out: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for stage, layer in zip(self.stage_names, (self.layer1, self.layer2, self.layer3, self.layer4), strict=True):
            out += [(f"{stage}.{i}", block) for i, block in enumerate(layer)]
        out.append(("head", self.head))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, unit in self.units():
            x = unit(x)
        return x


@dataclass(frozen=True)
class SplitPoint:
    """`device_units` units of the chain run on the device; `coarse` marks the paper's five building blocks."""

    name: str
    device_units: int
    coarse: bool
    label: str


SPLIT_POINTS: Registry[SplitPoint] = Registry("split point")
for _sp in (
    SplitPoint("server_only", 0, True, "server only (input PNG)"),
    SplitPoint("stem", 1, True, "after conv1"),
    SplitPoint("conv2_x.0", 2, False, "after conv2_x block 1"),
    SplitPoint("conv2_x", 3, True, "after conv2_x"),
    SplitPoint("conv3_x.0", 4, False, "after conv3_x block 1"),
    SplitPoint("conv3_x", 5, True, "after conv3_x"),
    SplitPoint("conv4_x.0", 6, False, "after conv4_x block 1"),
    SplitPoint("conv4_x", 7, True, "after conv4_x"),
    SplitPoint("conv5_x.0", 8, False, "after conv5_x block 1"),
    SplitPoint("conv5_x", 9, True, "after conv5_x (before pooling)"),
    SplitPoint("device_only", 10, True, "device only (sends the label)"),
):
    SPLIT_POINTS.add(_sp.name, _sp)

END_POINTS = ("server_only", "device_only")


def split_names(coarse_only: bool = True) -> list[str]:
    return [n for n in SPLIT_POINTS if SPLIT_POINTS.get(n).coarse or not coarse_only]


def build_model(name: str, width: float, num_classes: int, in_channels: int) -> nn.Module:
    return MODELS.get(name)(width=width, num_classes=num_classes, in_channels=in_channels)


def split(model: CifarResNet18, point: str) -> tuple[nn.Sequential, nn.Sequential]:
    """Device and server parts (sharing the model's parameters) whose composition is the whole model."""
    k = SPLIT_POINTS.get(point).device_units
    units = model.units()
    device = nn.Sequential()
    server = nn.Sequential()
    for name, unit in units[:k]:
        device.add_module(name.replace(".", "_"), unit)
    for name, unit in units[k:]:
        server.add_module(name.replace(".", "_"), unit)
    return device, server
