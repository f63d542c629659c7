"""Quantisation and entropy coding of intermediate features: the `original` baseline of Shao & Zhang 2020 sends the
split-point feature quantised to 8 bits uniformly and Huffman-coded; the learned encoders' symbols are coded with
ANS (`AnsCodec`, constriction) under per-context models fitted on training symbols. Codecs share a small
CompressAI-style interface (fit / encode / decode / bits_per_image / ideal_bits_per_image / state_dict) and live in the
`CODECS` registry."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import constriction
import numpy as np
import torch
from dahuffman import HuffmanCodec as _DahuffmanCodec
from torch import Tensor

from engine.registry import Registry

_CHUNK_SYMBOLS = 1 << 17  # symbols encoded per vectorised pass; keeps temporaries (1 MB per array) in cache
_MAX_CODE_BITS = 64  # codewords are packed into 64-bit words; Huffman over < 1e13 counts stays far below this
_DECODE_TABLE_BITS = 16  # width of the decoder's primary lookup table; longer codes fall back to a bitwise walk
_ANS_PRECISION_BITS = 24  # constriction's AnsCoder quantises probabilities to 24 bits; a smaller state codes wastefully
_ANS_MAX_ALPHABET = 1 << 16


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


def _as_symbols(symbols: Any, alphabet_size: int, ndim: int) -> np.ndarray:
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


def _row_sums(table: np.ndarray, symbols_2d: np.ndarray) -> np.ndarray:
    """Per-row sums of table[symbol], a chunk of rows at a time (one [N, D] gather would not fit in cache)."""
    n, d = symbols_2d.shape
    out = np.zeros(n, dtype=table.dtype)
    per_chunk = max(1, _CHUNK_SYMBOLS // max(d, 1))
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


@CODECS.register("huffman")
class HuffmanCodec(EntropyCodec):
    """Static Huffman code over the alphabet [0, alphabet_size), built by dahuffman from add-one smoothed training
    counts (so unseen symbols stay encodable). Streams are codewords concatenated MSB-first, zero-padded to a byte,
    with no end-of-file symbol: the decoder is told the count. Bit order matches dahuffman's `PrefixCodec.encode`."""

    def __init__(self, counts: Sequence[int] | np.ndarray, code_lengths: Sequence[int] | np.ndarray,
                 codes: Sequence[int] | np.ndarray) -> None:
        lengths, values = [int(n) for n in code_lengths], [int(v) for v in codes]
        if not len(counts) == len(lengths) == len(values) >= 2:
            raise ValueError("a Huffman code needs counts, code lengths and codes for an alphabet of >= 2 symbols")
        if not all(1 <= n <= _MAX_CODE_BITS and 0 <= v < 1 << n for n, v in zip(lengths, values, strict=True)):
            raise ValueError(f"code lengths must be in [1, {_MAX_CODE_BITS}] bits and code values fit their lengths")
        top = _MAX_CODE_BITS
        spans = sorted((v << (top - n), (v + 1) << (top - n)) for n, v in zip(lengths, values, strict=True))
        if spans[0][0] != 0 or spans[-1][1] != 1 << top or any(a[1] != b[0] for a, b in pairwise(spans)):
            raise ValueError("the code table is not a complete prefix code")
        self.counts = np.asarray(counts, dtype=np.int64)
        if (self.counts < 1).any():
            raise ValueError("counts must be positive (they are add-one smoothed)")
        self.code_lengths = np.array(lengths, dtype=np.int64)
        self.codes = np.array(values, dtype=np.uint64)
        self.alphabet_size = len(lengths)
        self._decode_tables: tuple[np.ndarray, np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]], int] | None = None

    # -- building and exporting -------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, symbols: np.ndarray, alphabet_size: int) -> HuffmanCodec:
        """Count `symbols` (any shape), add one to every count, and let dahuffman build the Huffman code."""
        if alphabet_size < 2:
            raise ValueError(f"alphabet_size must be >= 2, got {alphabet_size}")
        if isinstance(symbols, Tensor):
            symbols = symbols.detach().cpu().numpy()
        flat = _as_symbols(np.asarray(symbols).ravel(), alphabet_size, 1)
        counts = np.bincount(flat, minlength=alphabet_size).astype(np.int64) + 1
        return cls.from_counts(counts)

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> HuffmanCodec:
        """Huffman code for positive symbol counts. An in-alphabet symbol is passed as dahuffman's `eof` so that it
        adds no end-of-file leaf: the code covers exactly the alphabet."""
        counts = np.asarray(counts, dtype=np.int64)
        table = _DahuffmanCodec.from_frequencies({s: int(c) for s, c in enumerate(counts)}, eof=0).get_code_table()
        return cls(counts, [table[s][0] for s in range(counts.size)], [table[s][1] for s in range(counts.size)])

    def code_table(self) -> dict[int, tuple[int, int]]:
        """{symbol: (bitsize, value)}, the format of dahuffman's `PrefixCodec`."""
        return {s: (int(n), int(v)) for s, (n, v) in enumerate(zip(self.code_lengths, self.codes, strict=True))}

    def state_dict(self) -> dict[str, Any]:
        return {
            "codec": "huffman",
            "alphabet_size": self.alphabet_size,
            "counts": self.counts.tolist(),
            "code_lengths": self.code_lengths.tolist(),
            "codes": [int(v) for v in self.codes],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HuffmanCodec:
        """Rebuild from the exported table itself (not from the counts), so a stream stays decodable across versions
        of the library that built the code."""
        return cls(state["counts"], state["code_lengths"], state["codes"])

    # -- the probability model ---------------------------------------------------------------------------------------

    @property
    def probs(self) -> np.ndarray:
        return self.counts / self.counts.sum()

    @property
    def entropy_bits(self) -> float:
        """Entropy H of the smoothed model, bits/symbol; Huffman's mean code length lies in [H, H + 1)."""
        p = self.probs
        return float(-(p * np.log2(p)).sum())

    @property
    def mean_code_length(self) -> float:
        """Expected code length in bits/symbol under the smoothed model."""
        return float((self.probs * self.code_lengths).sum())

    def ideal_bits_per_image(self, symbols_2d: np.ndarray) -> np.ndarray:
        arr = _as_symbols(symbols_2d, self.alphabet_size, 2)
        return _row_sums(-np.log2(self.probs), arr)

    def bits_per_image(self, symbols_2d: np.ndarray) -> np.ndarray:
        """8 * len(stream) of `encode`'s streams, from the code lengths (tests check it against `encode`)."""
        arr = _as_symbols(symbols_2d, self.alphabet_size, 2)
        return (_row_sums(self.code_lengths, arr) + 7) // 8 * 8

    # -- coding ------------------------------------------------------------------------------------------------------

    def encode(self, symbols_2d: np.ndarray) -> list[bytes]:
        """Vectorised encoder: a chunk of images is laid out as one bitstream with each image starting on a byte,
        every codeword is shifted into the 64-bit word holding its last bit (with its head spilling into the word
        before when it straddles), words are OR-reduced, written big-endian, and cut into per-image streams."""
        arr = _as_symbols(symbols_2d, self.alphabet_size, 2)
        n, d = arr.shape
        if d == 0:
            return [b""] * n
        out: list[bytes] = []
        per_chunk = max(1, _CHUNK_SYMBOLS // d)
        lengths, codes = self.code_lengths.astype(np.uint64), self.codes
        for i in range(0, n, per_chunk):
            out.extend(_encode_chunk(arr[i:i + per_chunk], lengths, codes))
        return out

    def decode(self, stream: bytes, count: int) -> np.ndarray:
        """Vectorised decoder: the codeword that would start at every bit position is resolved at once (a k-bit
        lookup table, then the longer codes by length), which gives each position's successor; the positions where
        the `count` symbols start follow by pointer doubling (the first 2^j starts map to the next 2^j)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        dtype = np.uint8 if self.alphabet_size <= 256 else np.int64
        if count == 0:
            return np.zeros(0, dtype=dtype)
        sym_of, len_of, long_codes, k = self._tables()
        nbits = 8 * len(stream)
        padded = np.frombuffer(bytes(stream) + bytes(13), dtype=np.uint8)  # 8 bytes past the last start, + 4
        prefix = _windows(padded, k, nbits).astype(np.int64)
        length, symbol = len_of[prefix], sym_of[prefix]
        need = np.flatnonzero(length == 0)
        for n, (values, symbols) in long_codes.items():  # codes longer than the table, rising lengths
            if need.size == 0:
                break
            value = _windows(padded, n, nbits, need)
            found = np.minimum(np.searchsorted(values, value), values.size - 1)
            hit = values[found] == value
            length[need[hit]], symbol[need[hit]] = n, symbols[found[hit]]
            need = need[~hit]
        end = nbits + 1  # a sentinel past the stream; an invalid codeword leads there too
        successor = np.append(np.where(length > 0, np.minimum(np.arange(nbits + 1) + length, end), end), end)
        starts, jump = np.zeros(1, dtype=np.int64), successor
        while starts.size < count:
            more = jump[starts[: count - starts.size]]
            starts = np.concatenate([starts, more])
            if starts.size < count:
                jump = jump[jump]
        inside = starts < nbits
        at = length[np.minimum(starts, nbits)]
        failed = np.flatnonzero(~inside | (at == 0))
        if failed.size:  # the first symbol that cannot be read: past the end, or no codeword starts there
            i = int(failed[0])
            if not inside[i]:
                raise ValueError(f"stream ends after {i} of {count} symbols")
            raise ValueError(f"invalid codeword at bit {int(starts[i])}")
        if int(starts[-1]) + int(at[-1]) > nbits:
            raise ValueError(f"stream ends inside symbol {count - 1}")
        return symbol[starts].astype(dtype)

    def _tables(self) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]], int]:
        """(symbol, length) per k-bit prefix (length 0 marks a longer code), and per longer length its code values
        (sorted) with their symbols."""
        if self._decode_tables is None:
            k = min(int(self.code_lengths.max()), _DECODE_TABLE_BITS)
            sym_of = np.zeros(1 << k, dtype=np.int64)
            len_of = np.zeros(1 << k, dtype=np.int64)
            long: dict[int, list[tuple[int, int]]] = {}
            for s, (n, v) in enumerate(zip(self.code_lengths.tolist(), self.codes.tolist(), strict=True)):
                if n <= k:
                    first = v << (k - n)
                    sym_of[first:first + (1 << (k - n))] = s
                    len_of[first:first + (1 << (k - n))] = n
                else:
                    long.setdefault(n, []).append((v, s))
            long_codes = {n: (np.array([v for v, _ in sorted(c)], dtype=np.uint64),
                              np.array([s for _, s in sorted(c)], dtype=np.int64)) for n, c in sorted(long.items())}
            self._decode_tables = (sym_of, len_of, long_codes, k)
        return self._decode_tables


def _windows(stream: np.ndarray, n: int, nbits: int, at: np.ndarray | None = None) -> np.ndarray:
    """The n-bit big-endian values (uint64, n <= 64) starting at each bit position 0..nbits of the byte array `stream`
    (which ends in at least 13 zero bytes of padding), or at the positions `at`: the bytes holding one, shifted."""
    pos = np.arange(nbits + 1, dtype=np.int64) if at is None else at
    if n > 57:  # more than 8 bytes may hold it: the first 32 bits, then the rest
        return (_windows(stream, 32, nbits, pos) << np.uint64(n - 32)) | _windows(stream, n - 32, nbits, pos + 32)
    first, width = pos >> 3, (n + 14) // 8  # the bytes that hold n bits from any bit offset
    word = stream[first].astype(np.uint64)
    for j in range(1, width):
        word = (word << np.uint64(8)) | stream[first + j]
    shift = (8 * width - n - (pos & 7)).astype(np.uint64)
    return (word >> shift) & np.uint64((1 << n) - 1)


def _encode_chunk(sym: np.ndarray, lengths: np.ndarray, codes: np.ndarray) -> list[bytes]:
    """Encode the rows of `sym` (see `HuffmanCodec.encode`); `lengths` as uint64, codes of <= 64 bits. Codeword bits
    are disjoint, so OR equals a sum: each word is a difference of a (mod 2**64) running sum of shifted codewords."""
    lens = lengths[sym]  # [n, d] uint64
    ends = np.cumsum(lens, axis=1, dtype=np.uint64)  # end bit of each codeword within its image
    row_start = np.zeros(len(sym) + 1, dtype=np.uint64)  # in bytes: each image starts on a byte
    np.cumsum((ends[:, -1] + 7) >> 3, out=row_start[1:])
    ends += (row_start[:-1] << 3)[:, None]
    ends = ends.ravel()  # global end bit, nondecreasing
    lens = lens.ravel()
    vals = codes[sym.ravel()]
    shift = np.negative(ends)
    shift &= 63  # 64 - (end position of the codeword within the word holding its last bit)
    main = vals << shift  # the codeword's tail, aligned in that word; head bits above the word are shifted out
    nwords = (int(row_start[-1]) + 7) >> 3
    last = np.searchsorted(ends, np.arange(1, nwords + 1, dtype=np.uint64) << 6, side="right")  # per word
    running = np.cumsum(main)  # wraps mod 2**64, harmlessly: differences within a word are exact
    words = np.diff(np.where(last > 0, running[np.maximum(last, 1) - 1], 0), prepend=np.uint64(0))
    lens += shift
    spill = np.flatnonzero(lens > 64)  # codewords whose head lies in the previous word (one per word boundary)
    words[((ends[spill] - 1) >> 6) - 1] |= vals[spill] >> (64 - shift[spill])
    buf = words.astype(">u8").tobytes()
    bounds = row_start.tolist()
    return [buf[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@CODECS.register("ans")
class AnsCodec(EntropyCodec):
    """Asymmetric numeral systems (Duda et al. 2015) by constriction's `AnsCoder`, one stream per image, with one
    categorical model per *context*: a position's context is given at fit time (each latent dimension its own model,
    or each channel of a feature map one model) or, without contexts, all positions share one model. Models are
    add-one smoothed training counts, so unseen symbols stay encodable.

    Short messages: an ANS coder started from an empty state spends about 24 bits of its final state on nothing.
    Here the initial state instead carries the k highest-entropy positions raw, x0 = K**k + sum(s_i K**i), so the
    overhead over the ideal bits is those positions' raw excess, what a small x0 still wastes, and byte padding.
    k = ceil(24 / log2 K) (x0 >= 2**24) by default; `fit` with contexts picks the k in [0, that] that gives the
    shortest streams on the training symbols. Stream: the coder's 32-bit words, little-endian, with the zero bytes
    at the top of the last word dropped (at most 3); the decoder pads them back and is told the count, as for
    `HuffmanCodec`. When every position is raw (a message of a few symbols, e.g. one vector-codebook index), the
    stream is the digits alone, ceil(log2(K**k) / 8) bytes."""

    def __init__(self, counts: Sequence[Sequence[int]] | np.ndarray,
                 contexts: Sequence[int] | np.ndarray | None = None, raw_count: int | None = None) -> None:
        table = np.asarray(counts, dtype=np.int64)
        if table.ndim == 1:
            table = table[None]
        if table.ndim != 2 or table.shape[0] < 1 or not 2 <= table.shape[1] <= _ANS_MAX_ALPHABET:
            raise ValueError(f"counts must be [contexts, alphabet] with an alphabet of 2..{_ANS_MAX_ALPHABET} symbols")
        if (table < 1).any():
            raise ValueError("counts must be positive (they are add-one smoothed)")
        self.counts = table
        self.alphabet_size = int(table.shape[1])
        self.contexts: np.ndarray | None = None
        if contexts is not None:
            ctx = np.asarray(contexts, dtype=np.int64)
            if ctx.ndim != 1 or (ctx.size and (ctx.min() < 0 or ctx.max() >= len(table))):
                raise ValueError(f"contexts must be a 1-d array of model indices in [0, {len(table)})")
            self.contexts = ctx
        if raw_count is not None and not 0 <= raw_count * math.log2(self.alphabet_size) <= 48:
            raise ValueError(f"raw_count must be >= 0 and carry at most 48 bits, got {raw_count}")
        self.raw_count = raw_count
        self._models = [constriction.stream.model.Categorical(p, perfect=False) for p in self.probs]
        self._layouts: dict[int, _AnsLayout] = {}

    # -- building and exporting -------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, symbols: np.ndarray, alphabet_size: int, contexts: Sequence[int] | np.ndarray | None = None,
            tune_rows: int = 256) -> AnsCodec:
        """Count training symbols per context (symbols [N, D] with `contexts` of length D, or any shape without);
        with contexts, pick the number of raw positions on the first `tune_rows` training rows."""
        if not 2 <= alphabet_size <= _ANS_MAX_ALPHABET:
            raise ValueError(f"alphabet_size must be in [2, {_ANS_MAX_ALPHABET}], got {alphabet_size}")
        if isinstance(symbols, Tensor):
            symbols = symbols.detach().cpu().numpy()
        if contexts is None:
            flat = _as_symbols(np.asarray(symbols).ravel(), alphabet_size, 1).astype(np.int64)
            return cls(np.bincount(flat, minlength=alphabet_size)[None] + 1)
        ctx = np.asarray(contexts, dtype=np.int64)
        arr = _as_symbols(symbols, alphabet_size, 2).astype(np.int64)
        if arr.shape[1] != ctx.size:
            raise ValueError(f"{ctx.size} contexts for {arr.shape[1]} symbols per image")
        n_ctx = int(ctx.max()) + 1 if ctx.size else 1
        flat = (ctx[None, :] * alphabet_size + arr).ravel()
        counts = np.bincount(flat, minlength=n_ctx * alphabet_size).reshape(n_ctx, alphabet_size) + 1
        sample = arr[:tune_rows]
        if not len(sample) or not ctx.size:
            return cls(counts, ctx)
        top = min(ctx.size, _default_raw_count(alphabet_size))
        sizes = [sum(map(len, cls(counts, ctx, k).encode(sample))) for k in range(top + 1)]
        return cls(counts, ctx, int(np.argmin(sizes)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "codec": "ans",
            "alphabet_size": self.alphabet_size,
            "counts": self.counts.tolist(),
            "contexts": None if self.contexts is None else self.contexts.tolist(),
            "raw_count": self.raw_count,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AnsCodec:
        return cls(state["counts"], state.get("contexts"), state.get("raw_count"))

    # -- the probability model ---------------------------------------------------------------------------------------

    @property
    def probs(self) -> np.ndarray:
        """[contexts, alphabet] probabilities of the smoothed models."""
        return self.counts / self.counts.sum(axis=1, keepdims=True)

    @property
    def entropy_bits(self) -> np.ndarray:
        """Entropy of each context's model, bits/symbol."""
        p = self.probs
        return -(p * np.log2(p)).sum(axis=1)

    def ideal_bits_per_image(self, symbols_2d: np.ndarray) -> np.ndarray:
        arr = _as_symbols(symbols_2d, self.alphabet_size, 2).astype(np.int64)
        ctx = self._layout(arr.shape[1]).contexts
        return (-np.log2(self.probs))[ctx[None, :], arr].sum(axis=1)

    # -- coding ------------------------------------------------------------------------------------------------------

    def encode(self, symbols_2d: np.ndarray) -> list[bytes]:
        arr = _as_symbols(symbols_2d, self.alphabet_size, 2)
        n, d = arr.shape
        if d == 0:
            return [b""] * n
        lay = self._layout(d)
        arr = arr.astype(np.int32)
        states = lay.radix + (arr[:, lay.raw].astype(np.int64) * lay.place).sum(axis=1)
        ans_symbols = arr[:, lay.coded]
        family = constriction.stream.model.Categorical(perfect=False)
        if not lay.coded.size:  # every position raw: the digits alone, fixed length
            return [(state - lay.radix).to_bytes(lay.raw_bytes, "little") for state in states.tolist()]
        out = []
        for state, row in zip(states.tolist(), ans_symbols, strict=True):
            coder = constriction.stream.stack.AnsCoder(_state_words(state))
            if lay.table is None:
                for start, stop, c in reversed(lay.runs):
                    coder.encode_reverse(row[start:stop], self._models[c])
            elif row.size:
                coder.encode_reverse(row, family, lay.table)
            out.append(_trim(coder.get_compressed().astype("<u4").tobytes()))
        return out

    def decode(self, stream: bytes, count: int) -> np.ndarray:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        lay = self._layout(count)
        if not stream:
            raise ValueError("empty stream for a nonempty message")
        if not lay.coded.size:
            state = int.from_bytes(stream, "little")
            if len(stream) != lay.raw_bytes or state >= lay.radix:
                raise ValueError(f"corrupt stream: {len(stream)} bytes for {count} raw symbols")
            return state // lay.place % self.alphabet_size
        padded = stream + bytes(-len(stream) % 4)
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(padded, dtype="<u4").astype(np.uint32))
        coded = np.zeros(lay.coded.size, dtype=np.int64)
        if lay.table is None:
            for start, stop, c in lay.runs:
                coded[start:stop] = coder.decode(self._models[c], stop - start)
        elif coded.size:
            coded[:] = coder.decode(constriction.stream.model.Categorical(perfect=False), lay.table)
        words = coder.get_compressed().astype(np.uint64).tolist()
        if not 1 <= len(words) <= 2:
            raise ValueError(f"stream does not end where {count} symbols end ({len(words)} words left)")
        state = sum(w << (32 * i) for i, w in enumerate(words)) - lay.radix
        if not 0 <= state < lay.radix:
            raise ValueError("corrupt stream: its initial state is out of range")
        out = np.zeros(count, dtype=np.int64)
        out[lay.coded] = coded
        for i, pos in enumerate(lay.raw.tolist()):
            out[pos] = state // int(lay.place[i]) % self.alphabet_size
        return out

    def _layout(self, d: int) -> _AnsLayout:
        """Which positions travel raw in the initial state and how the rest are modelled, for d symbols per image."""
        if d not in self._layouts:
            if self.contexts is not None and self.contexts.size != d:
                raise ValueError(f"this codec was fitted on {self.contexts.size} symbols per image, not {d}")
            k = _default_raw_count(self.alphabet_size) if self.raw_count is None else self.raw_count
            self._layouts[d] = _AnsLayout.build(
                self.contexts if self.contexts is not None else np.zeros(d, dtype=np.int64),
                self.entropy_bits, self.probs, min(d, k))
        return self._layouts[d]


@dataclass(frozen=True)
class _AnsLayout:
    contexts: np.ndarray  # model of each position
    raw: np.ndarray  # positions carried raw by the initial state (ascending)
    coded: np.ndarray  # positions coded by ANS, in decoding order
    place: np.ndarray  # K**i for the i-th raw position
    radix: int  # K**k: the initial state is radix + raw digits
    runs: list[tuple[int, int, int]]  # (start, stop, context) runs of equal context along `coded`
    table: np.ndarray | None  # per-symbol probability rows when runs are too short to code run by run

    @property
    def raw_bytes(self) -> int:
        """Bytes of the raw digits alone (the stream when no position is ANS-coded)."""
        return max(1, ((self.radix - 1).bit_length() + 7) // 8)

    @classmethod
    def build(cls, contexts: np.ndarray, entropy: np.ndarray, probs: np.ndarray, k: int) -> _AnsLayout:
        d, k_alphabet = contexts.size, probs.shape[1]
        order = np.argsort(-entropy[contexts], kind="stable")
        raw = np.sort(order[:k])
        coded = np.setdiff1d(np.arange(d), raw)
        ctx = contexts[coded]
        edges = np.flatnonzero(np.diff(ctx)) + 1 if ctx.size else np.zeros(0, dtype=np.int64)
        starts = [0, *edges.tolist()]
        stops = [*edges.tolist(), int(ctx.size)]
        runs = [(a, b, int(ctx[a])) for a, b in zip(starts, stops, strict=True) if b > a]
        table = None if 4 * len(runs) <= ctx.size else np.ascontiguousarray(probs[ctx], dtype=np.float64)
        place = k_alphabet ** np.arange(k, dtype=np.int64)
        return cls(contexts, raw, coded, place, k_alphabet**k, runs, table)


def _default_raw_count(alphabet_size: int) -> int:
    """Raw positions that make the initial state at least 2**24."""
    return math.ceil(_ANS_PRECISION_BITS / math.log2(alphabet_size))


def _state_words(state: int) -> np.ndarray:
    """An ANS state as constriction's words (least significant first)."""
    return np.array([state & 0xFFFFFFFF, state >> 32] if state >> 32 else [state], dtype=np.uint32)


def _trim(stream: bytes) -> bytes:
    """Drop the zero bytes at the top of the last (most significant) word; the decoder pads them back."""
    keep = len(stream)
    while keep > len(stream) - 3 and keep > 1 and stream[keep - 1] == 0:
        keep -= 1
    return stream[:keep]
