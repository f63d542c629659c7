"""Quantisation and entropy coding of intermediate features, the interface every codec shares: the uniform quantiser
of the `original` baseline (Shao & Zhang 2020), the empirical entropy, and `EntropyCodec` (a small CompressAI-style
interface: fit / encode / decode / bits_per_image / ideal_bits_per_image / state_dict). Codecs register in `CODECS`
where they are defined: `huffman` (engine.coding.huffman) and `ans` (engine.coding.ans)."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.registry import Registry

CHUNK_SYMBOLS = 1 << 17  # symbols encoded per vectorised pass; keeps temporaries (1 MB per array) in cache


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


def empirical_entropy_bits(symbols: np.ndarray) -> float:
    """Entropy in bits per symbol of the empirical distribution of `symbols` (any shape, nonnegative ints)."""
    flat = np.asarray(symbols).ravel()
    if flat.size == 0:
        return 0.0
    counts = np.bincount(flat)
    p = counts[counts > 0] / flat.size
    return float(-(p * np.log2(p)).sum())


def as_symbols(symbols: Any, alphabet_size: int, ndim: int) -> np.ndarray:
    """Validate symbols as an integer array of `ndim` dimensions with values in [0, alphabet_size)."""
    if isinstance(symbols, Tensor):
        symbols = symbols.detach().cpu().numpy()
    arr = np.asarray(symbols)
    if arr.ndim != ndim:
        raise ValueError(f"expected a {ndim}-d array of symbols, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"symbols must be integers, got dtype {arr.dtype}")
    if arr.size and not (arr.dtype == np.uint8 and alphabet_size >= 256):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= alphabet_size:
            raise ValueError(f"symbols span [{lo}, {hi}], outside the alphabet [0, {alphabet_size})")
    return arr


def row_sums(table: np.ndarray, symbols_2d: np.ndarray) -> np.ndarray:
    """Per-row sums of table[symbol], a chunk of rows at a time (one [N, D] gather would not fit in cache)."""
    n, d = symbols_2d.shape
    out = np.zeros(n, dtype=table.dtype)
    per_chunk = max(1, CHUNK_SYMBOLS // max(d, 1))
    for i in range(0, n, per_chunk):
        out[i:i + per_chunk] = table[symbols_2d[i:i + per_chunk]].sum(axis=1)
    return out


class EntropyCodec(ABC):
    """Common interface of the lossless coders of integer symbols, one bitstream per image (as CompressAI's
    `compress`/`decompress`). Implementations are built with the `fit` classmethod and rebuilt with `from_state`."""

    alphabet_size: int

    @classmethod
    @abstractmethod
    def fit(cls, symbols: np.ndarray, alphabet_size: int) -> EntropyCodec:
        """Build the probability model (and code) from training symbols."""

    @abstractmethod
    def encode(self, symbols_2d: np.ndarray) -> list[bytes]:
        """One bitstream per row of an [N, D] array of symbols."""

    @abstractmethod
    def decode(self, stream: bytes, count: int) -> np.ndarray:
        """Exactly the `count` symbols that `encode` wrote into `stream`."""

    @abstractmethod
    def ideal_bits_per_image(self, symbols_2d: np.ndarray) -> np.ndarray:
        """Per-row sum of -log2 p(symbol) under the fitted model (the cross-entropy)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable numbers and lists from which `from_state` rebuilds an identical codec."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any]) -> EntropyCodec: ...

    def bits_per_image(self, symbols_2d: np.ndarray) -> np.ndarray:
        """Sizes in bits of the actual bitstreams (8 * bytes). Subclasses may compute it without encoding."""
        return np.array([8 * len(s) for s in self.encode(symbols_2d)], dtype=np.int64)

    def coding_seconds(self, symbols_2d: np.ndarray, images: int = 200) -> float:
        """Mean CPU seconds to encode one image's symbols and decode them back, one image at a time as a deployed
        device and server do (the first `images` rows; the decoded symbols are checked)."""
        rows = symbols_2d[:images]
        if len(rows) == 0:
            return 0.0
        start = time.perf_counter()
        for row in rows:
            (stream,) = self.encode(row[None, :])
            if not np.array_equal(self.decode(stream, len(row)), row):
                raise RuntimeError("the entropy decoder did not return the symbols that were sent")
        return (time.perf_counter() - start) / len(rows)


CODECS: Registry[type[EntropyCodec]] = Registry("codec")
