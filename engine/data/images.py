"""The decoded dataset: uint8 images and int64 labels of a train and a test split, with the class names, the
source's fingerprint and the per-channel moments used for normalisation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch


@dataclass(frozen=True, eq=False)
class ImageData:
    """A decoded dataset: uint8 images (N, C, H, W) and int64 labels. Treat the tensors as read-only."""

    name: str
    classes: list[str]
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    fingerprint: str = ""  # content hash of the source, plus a suffix when subset
    source: str = ""  # human description

    def __post_init__(self) -> None:
        for x, y in ((self.train_x, self.train_y), (self.test_x, self.test_y)):
            if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.int64 or y.shape != (len(x),):
                raise ValueError("ImageData wants uint8 images (N, C, H, W) and int64 labels (N,)")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError("train and test images differ in shape")

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Channels per image (1 for grey, 3 for RGB)."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    @cached_property
    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact per-channel mean and std of train_x in [0, 1] units, from 256-bin histograms."""
        levels = torch.arange(256, dtype=torch.float64) / 255.0
        mean, std = [], []
        for c in range(self.channels):
            hist = torch.bincount(self.train_x[:, c].reshape(-1), minlength=256).to(torch.float64)
            n = max(float(hist.sum()), 1.0)
            m = float((hist * levels).sum()) / n
            var = float((hist * (levels - m) ** 2).sum()) / n
            mean.append(m)
            std.append(max(math.sqrt(var), 1e-3))
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean of train_x in [0, 1] units, float32 (C,)."""
        return self._moments[0]

    @property
    def std(self) -> torch.Tensor:
        """Per-channel standard deviation of train_x in [0, 1] units, float32 (C,)."""
        return self._moments[1]
