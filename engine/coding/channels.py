"""Noisy channels as non-trainable layers, for learning-driven joint source-channel coding (Shao & Zhang 2020,
Sec. "Learning-Driven Joint Source-Channel Coding": "model a noisy channel as a non-trainable layer in the DNN"),
and their capacities, the bound that separate source and channel coding is measured at (Fig. 5).

Conventions (README, "What is measured"):
    AWGN   complex baseband; the encoder's 2k reals are k complex channel uses (real, imaginary interleaved); each
           image's average transmit power is normalised to 1, so SNR = 1 / sigma^2; capacity log2(1 + SNR) bits per
           use, W log2(1 + SNR) bits/s at W uses per second.
    BSC    the encoder's n reals are binarised by sign (+1 / -1, straight-through gradient) and each bit flips with
           probability p; capacity 1 - H2(p) bits per channel bit.

Every channel is seeded: `reseed(seed)` fixes the noise of what follows (one realisation); in training a
`train_range` draws each image's SNR or p uniformly from a range, so one model serves every condition in it.
A further channel is one small class registered in `CHANNELS` (see `BinaryErasure` in tests/unit/test_channels.py)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from engine.errors import UserError
from engine.latency import (  # the capacity formulas live with the latency model; re-exported here
    awgn_capacity_bps,
    binary_entropy,
    bsc_capacity,
    bsc_channel_bits,
    jscc_seconds,
    separate_coding_seconds,
)
from engine.registry import Registry

__all__ = ["CHANNELS", "AWGNChannel", "BinarySymmetricChannel", "Channel", "awgn_capacity_bps", "binary_entropy",
           "bsc_capacity", "bsc_channel_bits", "build_channel", "jscc_seconds", "normalize_power",
           "separate_coding_seconds", "snr_db_to_linear"]


def snr_db_to_linear(snr_db: float | Tensor) -> float | Tensor:
    return 10.0 ** (snr_db / 10.0)


def normalize_power(x: Tensor) -> Tensor:
    """Scale each image's 2k reals (k complex symbols) to an average power of 1 per complex symbol."""
    flat = x.reshape(len(x), -1)
    k = flat.shape[1] / 2
    power = flat.pow(2).sum(1, keepdim=True) / k
    return (flat / power.clamp_min(1e-12).sqrt()).reshape(x.shape)


class Channel(nn.Module):
    """A non-trainable layer: forward(x [B, ...]) -> what the receiver gets, same shape. `condition` is the channel
    state in the unit of `condition_name` (SNR in dB, or a probability); `reals_per_use` is how many of the
    encoder's reals one channel use carries; `capacity(condition)` is in bits per channel use."""

    name: ClassVar[str]
    condition_name: ClassVar[str]
    condition_label: ClassVar[str]
    use_label: ClassVar[str]
    reals_per_use: ClassVar[int] = 1
    default_condition: ClassVar[float]
    higher_is_better: ClassVar[bool] = False  # SNR: True; a flip or erasure probability: False

    def __init__(self, condition: float | None = None, train_range: tuple[float, float] | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.condition = float(self.default_condition if condition is None else condition)
        self.check_condition(self.condition)
        if train_range is not None:
            lo, hi = (float(v) for v in train_range)
            if not lo <= hi:
                raise UserError(f"a training range is (low, high), got {train_range}")
            self.check_condition(lo)
            self.check_condition(hi)
            train_range = (lo, hi)
        self.train_range = train_range
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    @classmethod
    def check_condition(cls, condition: float) -> None:
        """Raise a UserError for a condition outside the channel's domain."""

    @staticmethod
    def capacity(condition: float) -> float:
        raise NotImplementedError

    def reseed(self, seed: int) -> Channel:
        """Restart the noise from `seed`: what follows is one reproducible channel realisation."""
        self.seed = int(seed)
        self._generators.clear()
        return self

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def conditions(self, batch: int, device: torch.device) -> Tensor:
        """Each image's condition [B, 1]: drawn from `train_range` in training, else `condition`."""
        if self.training and self.train_range is not None:
            lo, hi = self.train_range
            u = torch.rand(batch, 1, generator=self.generator(device), device=device)
            return lo + (hi - lo) * u
        return torch.full((batch, 1), self.condition, device=device)

    def uses(self, reals: int) -> int:
        """Channel uses per image for an encoder output of `reals` numbers."""
        if reals % self.reals_per_use:
            raise UserError(f"{self.name}: {reals} reals do not fill whole channel uses of {self.reals_per_use}")
        return reals // self.reals_per_use

    def separate_uses(self, bits: float, condition: float) -> float:
        """Channel uses that separate coding of `bits` needs at capacity: bits / C (infinite at C = 0)."""
        c = self.capacity(condition)
        return float("inf") if c <= 0 else bits / c

    @property
    def spec(self) -> dict[str, object]:
        """The channel as plain JSON: what a deployment applies between the two parts."""
        return {"name": self.name, self.condition_name: self.condition, "reals_per_use": self.reals_per_use,
                "train_range": list(self.train_range) if self.train_range else None}

    def extra_repr(self) -> str:
        rng = f", train_range={self.train_range}" if self.train_range else ""
        return f"{self.condition_name}={self.condition:g}{rng}, seed={self.seed}"


CHANNELS: Registry[type[Channel]] = Registry("channel")


@CHANNELS.register("awgn")
class AWGNChannel(Channel):
    """Complex AWGN: per-image power normalisation to 1, then circular Gaussian noise of variance 1 / SNR per complex
    use (half per real component). Differentiable: the gradient passes through the normalisation and the sum."""

    name = "awgn"
    condition_name = "snr_db"
    condition_label = "SNR (dB)"
    use_label = "complex channel uses"
    reals_per_use = 2
    default_condition = 10.0
    higher_is_better = True

    @staticmethod
    def capacity(condition: float) -> float:
        return float(awgn_capacity_bps(1.0, condition))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(len(x), -1)
        if flat.shape[1] % 2:
            raise UserError(f"AWGN needs an even number of reals per image (complex uses), got {flat.shape[1]}")
        signal = normalize_power(flat)
        snr = snr_db_to_linear(self.conditions(len(x), x.device))
        noise = torch.randn(flat.shape, generator=self.generator(x.device), device=x.device, dtype=flat.dtype)
        return (signal + noise * (0.5 / snr).sqrt().to(flat.dtype)).reshape(x.shape)


@CHANNELS.register("bsc")
class BinarySymmetricChannel(Channel):
    """Binary symmetric channel: each real becomes the bit sign(x) as +1 / -1 (straight-through: the encoder gets
    the gradient of the identity), then flips with probability p. The receiver gets +1 / -1."""

    name = "bsc"
    condition_name = "p"
    condition_label = "bit flip probability p"
    use_label = "channel bits"
    default_condition = 0.05

    @classmethod
    def check_condition(cls, condition: float) -> None:
        if not 0.0 <= condition <= 0.5:
            raise UserError(f"a BSC flip probability is in [0, 0.5], got {condition:g}")

    @staticmethod
    def capacity(condition: float) -> float:
        return float(bsc_capacity(condition))

    @staticmethod
    def binarize(x: Tensor) -> Tensor:
        """+1 where x >= 0, else -1, with the straight-through gradient."""
        hard = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
        return x + (hard - x).detach()

    def forward(self, x: Tensor) -> Tensor:
        flat = self.binarize(x.reshape(len(x), -1))
        p = self.conditions(len(x), x.device)
        u = torch.rand(flat.shape, generator=self.generator(x.device), device=x.device)
        flips = (u < p).to(flat.dtype)
        return (flat * (1.0 - 2.0 * flips)).reshape(x.shape)


def build_channel(name: str, condition: float | None = None, train_range: tuple[float, float] | None = None,
                  seed: int = 0) -> Channel:
    """A registered channel by name."""
    return CHANNELS.get(name)(condition, train_range, seed)
