"""Quantisation of intermediate features: the uniform quantiser of the `original` baseline (Shao & Zhang 2020).
The entropy codecs' interface and registry live in the torch-free `engine.entropy` and are re-exported here:
`EntropyCodec`, `CODECS` (`huffman`, `ans`), the empirical entropy and the symbol checks."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from engine.entropy.base import (
    CHUNK_SYMBOLS,
    CODECS,
    EntropyCodec,
    as_array,
    as_symbols,
    empirical_entropy_bits,
    row_sums,
)

__all__ = ["CHUNK_SYMBOLS", "CODECS", "EntropyCodec", "UniformQuantizer", "as_array", "as_symbols",
           "empirical_entropy_bits", "row_sums"]


class UniformQuantizer:
    """Uniform scalar quantiser with 2**bits levels spanning [lo, hi], range calibrated on training features
    (the 8-bit quantisation of the paper's `original` baseline). Rounds to the nearest level, clamps outside."""

    def __init__(self, bits: int = 8, lo: float = 0.0, hi: float = 1.0) -> None:
        if not 1 <= bits <= 16:
            raise ValueError(f"bits must be in [1, 16], got {bits}")
        if not (math.isfinite(lo) and math.isfinite(hi) and hi >= lo):
            raise ValueError(f"need finite lo <= hi, got [{lo}, {hi}]")
        self.bits = int(bits)
        self.lo = float(lo)
        self.hi = float(hi)

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def step(self) -> float:
        """Distance between adjacent levels; 1.0 for a degenerate range so that everything maps to level 0."""
        return (self.hi - self.lo) / (self.levels - 1) if self.hi > self.lo else 1.0

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.bits <= 8 else torch.int64

    def fit(self, features: Tensor) -> UniformQuantizer:
        """Calibrate [lo, hi] to the min and max of `features` (ReLU features give lo = 0)."""
        if features.numel() == 0:
            raise ValueError("cannot calibrate a quantiser on an empty tensor")
        self.lo = float(features.min())
        self.hi = float(features.max())
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            raise ValueError(f"non-finite features: range [{self.lo}, {self.hi}]")
        return self

    def quantize(self, x: Tensor) -> Tensor:
        """Integer symbols in [0, 2**bits): uint8 for bits <= 8, int64 otherwise."""
        q = torch.round((x.detach().float().clamp(self.lo, self.hi) - self.lo) / self.step)
        return q.clamp_(0, self.levels - 1).to(self.dtype)

    def dequantize(self, q: Tensor) -> Tensor:
        return q.float() * self.step + self.lo

    def state_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> UniformQuantizer:
        return cls(bits=int(state["bits"]), lo=float(state["lo"]), hi=float(state["hi"]))
