"""The interface every entropy codec shares and the registry they join, free of torch so that a device can code
without it: `EntropyCodec` (a small CompressAI-style interface: fit / encode / decode / bits_per_image /
ideal_bits_per_image / state_dict), the empirical entropy, and the array checks the codecs use. Codecs register in
`CODECS` where they are defined: `huffman` (engine.entropy.huffman) and `ans` (engine.entropy.ans)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from engine.registry import Registry

CHUNK_SYMBOLS = 1 << 17  # symbols encoded per vectorised pass; keeps temporaries (1 MB per array) in cache


def as_array(symbols: Any) -> Any:
    """`symbols` as numpy when it is a torch tensor (anything with `detach`), else unchanged; torch is not imported.

    Args:
        symbols: an array, a tensor, or anything `np.asarray` takes.

    Returns:
        The numpy array of a tensor, or `symbols` itself.
    """
    if hasattr(symbols, "detach") and hasattr(symbols, "cpu"):
        return symbols.detach().cpu().numpy()
    return symbols


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
    arr = np.asarray(as_array(symbols))
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
    # True where `bits_per_image` is exact to the bit and needs no encoding: a received payload's stated bits are then
    # checked against the code of the symbols decoded from it (`decode_payload`)
    exact_bits: ClassVar[bool] = False

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
        """The bits each bitstream holds, its padding to a whole byte left out (a stream is ceil(bits / 8) bytes):
        8 x its bytes unless the codec knows where its last bit is. Subclasses may compute it without encoding."""
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
