"""A small network of one's own, as a user brings it (`--model tests/user_model.py:TinyNet`): 28x28 one-channel
input, a residual addition and a concatenation of two branches, no split points declared."""

import torch
from torch import nn


def conv_bn(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU())


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, 8)
        self.res = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8))
        self.left = conv_bn(8, 6, stride=2)
        self.right = conv_bn(8, 10, stride=2)
        self.mix = conv_bn(16, 12, stride=2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.head(self.mix(x))
