"""A static Huffman code (dahuffman builds it; encoding and decoding are vectorised here), the code the `original`
baseline of Shao & Zhang 2020 sends its 8-bit feature with."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
from dahuffman import HuffmanCodec as _DahuffmanCodec

from engine.entropy.base import CHUNK_SYMBOLS, CODECS, EntropyCodec, as_array, as_symbols, row_sums

_MAX_CODE_BITS = 64  # codewords are packed into 64-bit words; Huffman over < 1e13 counts stays far below this
_DECODE_TABLE_BITS = 16  # width of the decoder's primary lookup table; longer codes fall back to a bitwise walk

@CODECS.register("huffman")
class HuffmanCodec(EntropyCodec):
    """Static Huffman code over the alphabet [0, alphabet_size), built by dahuffman from add-one smoothed training
    counts (so unseen symbols stay encodable). Streams are codewords concatenated MSB-first, zero-padded to a byte,
    with no end-of-file symbol: the decoder is told the count. Bit order matches dahuffman's `PrefixCodec.encode`."""

    exact_bits = True

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
        symbols = as_array(symbols)
        flat = as_symbols(np.asarray(symbols).ravel(), alphabet_size, 1)
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
        arr = as_symbols(symbols_2d, self.alphabet_size, 2)
        return row_sums(-np.log2(self.probs), arr)

    def bits_per_image(self, symbols_2d: np.ndarray) -> np.ndarray:
        """The bits of `encode`'s streams before their padding to a byte: the sum of the code lengths (tests check
        it against `encode`)."""
        arr = as_symbols(symbols_2d, self.alphabet_size, 2)
        return row_sums(self.code_lengths, arr).astype(np.int64)

    # -- coding ------------------------------------------------------------------------------------------------------

    def encode(self, symbols_2d: np.ndarray) -> list[bytes]:
        """Vectorised encoder: a chunk of images is laid out as one bitstream with each image starting on a byte,
        every codeword is shifted into the 64-bit word holding its last bit (with its head spilling into the word
        before when it straddles), words are OR-reduced, written big-endian, and cut into per-image streams."""
        arr = as_symbols(symbols_2d, self.alphabet_size, 2)
        n, d = arr.shape
        if d == 0:
            return [b""] * n
        out: list[bytes] = []
        per_chunk = max(1, CHUNK_SYMBOLS // d)
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
