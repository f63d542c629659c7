"""Width-scalable CIFAR ResNet18 (He et al. 2016, CIFAR variant: 3x3 stride-1 stem, no max-pool) as a chain of
units. Its split points are the ends of the paper's building blocks (Shao & Zhang 2020, Fig. 1), plus every
BasicBlock boundary as a finer point."""

from __future__ import annotations

import torch
from torch import nn

from engine.errors import UserError
from engine.models.base import MODELS, SplitPoint, named_points, scaled


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
    # the module paths of the stages, named as in the paper: pruning groups and sparsity targets use these names
    stages = (("stem", "stem"), *((f"layer{i + 1}", s) for i, s in enumerate(stage_names)))
    split_points = named_points(
        SplitPoint("stem", "stem", True, "after conv1"),
        *(p for i, s in enumerate(stage_names) for p in (
            SplitPoint(f"{s}.0", f"layer{i + 1}.0", False, f"after {s} block 1"),
            SplitPoint(s, f"layer{i + 1}", True, f"after {s}" + (" (before pooling)" if s == "conv5_x" else "")))),
    )

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
