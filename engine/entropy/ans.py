"""Asymmetric numeral systems (constriction's AnsCoder) under per-context models fitted on training symbols: the
entropy coder of the learned encoders' symbols."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np

from engine.entropy.base import CODECS, EntropyCodec, as_array, as_symbols

_ANS_PRECISION_BITS = 24  # constriction's AnsCoder quantises probabilities to 24 bits; a smaller state codes wastefully
_ANS_MAX_ALPHABET = 1 << 16


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
        symbols = as_array(symbols)
        if contexts is None:
            flat = as_symbols(np.asarray(symbols).ravel(), alphabet_size, 1).astype(np.int64)
            return cls(np.bincount(flat, minlength=alphabet_size)[None] + 1)
        ctx = np.asarray(contexts, dtype=np.int64)
        arr = as_symbols(symbols, alphabet_size, 2).astype(np.int64)
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
        arr = as_symbols(symbols_2d, self.alphabet_size, 2).astype(np.int64)
        ctx = self._layout(arr.shape[1]).contexts
        return (-np.log2(self.probs))[ctx[None, :], arr].sum(axis=1)

    # -- coding ------------------------------------------------------------------------------------------------------

    def encode(self, symbols_2d: np.ndarray) -> list[bytes]:
        arr = as_symbols(symbols_2d, self.alphabet_size, 2)
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
