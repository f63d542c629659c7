"""What one image's symbols send (engine.entropy.payload): the shorter of the fixed-length and the entropy-coded
form, told apart by the payload's length, round-trips; a payload that is neither form is refused."""

from __future__ import annotations

import numpy as np
import pytest

from engine.entropy import MalformedPayload, decode_payload, encode_payloads, fixed_bytes, payload_bits
from engine.entropy.ans import AnsCodec
from engine.entropy.base import EntropyCodec
from engine.entropy.huffman import HuffmanCodec
from engine.entropy.payload import pack_fixed, symbol_bits, unpack_fixed

ALPHABETS = (2, 3, 4, 5, 16, 17, 255, 256, 257, 1000, 4096, 65535, 65536)
LENGTHS = (1, 2, 3, 7, 100, 10000)


def _symbols(rng: np.random.Generator, k: int, shape: tuple[int, int], skewed: bool) -> np.ndarray:
    """Uniform symbols (the fixed-length form wins) or geometric ones (the entropy-coded form wins)."""
    if skewed:
        return np.minimum(rng.geometric(0.6, shape) - 1, k - 1)
    return rng.integers(0, k, shape)


def _codec(name: str, k: int, train: np.ndarray) -> EntropyCodec:
    return HuffmanCodec.fit(train, k) if name == "huffman" else AnsCodec.fit(train, k)


def test_symbol_bits_and_fixed_bytes() -> None:
    assert [symbol_bits(k) for k in (2, 3, 4, 5, 16, 17, 256, 257, 65536)] == [1, 2, 2, 3, 4, 5, 8, 9, 16]
    assert fixed_bytes(1, 16) == 1 and fixed_bytes(2, 16) == 1 and fixed_bytes(3, 16) == 2
    assert fixed_bytes(0, 16) == 0 and fixed_bytes(10000, 65536) == 20000 and fixed_bytes(9, 2) == 2
    with pytest.raises(ValueError, match="alphabet_size must be >= 2"):
        symbol_bits(1)


@pytest.mark.parametrize("k", ALPHABETS)
def test_fixed_form_round_trips(k: int) -> None:
    rng = np.random.default_rng(k)
    for d in LENGTHS:
        rows = rng.integers(0, k, (3, d))
        rows[0, -1] = k - 1  # the largest symbol fits its bits
        packed = pack_fixed(rows, k)
        assert [len(p) for p in packed] == [fixed_bytes(d, k)] * 3
        for p, row in zip(packed, rows, strict=True):
            assert np.array_equal(unpack_fixed(p, d, k), row)


@pytest.mark.parametrize("codec_name", ["huffman", "ans"])
@pytest.mark.parametrize("k", ALPHABETS)
def test_shortest_payload_round_trips(codec_name: str, k: int) -> None:
    """Random symbols over alphabets 2..65536 and messages of 1..10000 symbols: each payload is the shorter form
    (the entropy-coded one only when strictly shorter), `payload_bits` is 8 x its length, and it decodes back."""
    rng = np.random.default_rng(1000 + k)
    codec = _codec(codec_name, k, _symbols(rng, k, (50, 64), skewed=k % 2 == 0))
    for d in LENGTHS:
        for skewed in (False, True):
            rows = _symbols(rng, k, (2, d), skewed)
            payloads = encode_payloads(codec, rows)
            streams = codec.encode(rows)
            for p, s, row in zip(payloads, streams, rows, strict=True):
                assert p == (s if len(s) < fixed_bytes(d, k) else pack_fixed(row[None], k)[0])
                assert len(p) == min(len(s), fixed_bytes(d, k))
            assert payload_bits(codec, rows).tolist() == [8 * len(p) for p in payloads]
            for p, row in zip(payloads, rows, strict=True):
                assert np.array_equal(decode_payload(codec, p, d), row)


def test_a_four_bit_symbol_sends_one_byte() -> None:
    """One 4-bit symbol (a 16-codeword vector codebook): one byte, whether the entropy coder would spend one or two,
    and no flag bit on top: the payload's length says which form it is."""
    rng = np.random.default_rng(0)
    skewed = np.minimum(rng.geometric(0.5, (4000, 1)) - 1, 15)
    for codec in (AnsCodec.fit(skewed, 16, contexts=[0]), HuffmanCodec.fit(skewed, 16)):
        rows = np.arange(16)[:, None]
        payloads = encode_payloads(codec, rows)
        assert [len(p) for p in payloads] == [1] * 16
        assert payload_bits(codec, rows).tolist() == [8] * 16
        assert [int(decode_payload(codec, p, 1)[0]) for p in payloads] == list(range(16))
    huffman = HuffmanCodec.fit(skewed, 16)
    assert max(len(s) for s in huffman.encode(rows)) == 2  # the rare symbols' codes take more than a byte


def test_the_entropy_coded_form_is_sent_when_shorter() -> None:
    rng = np.random.default_rng(3)
    train = np.minimum(rng.geometric(0.9, (20, 500)) - 1, 255)
    codec = HuffmanCodec.fit(train, 256)
    rows = np.minimum(rng.geometric(0.9, (4, 500)) - 1, 255)
    payloads = encode_payloads(codec, rows)
    assert payloads == codec.encode(rows)
    assert all(len(p) < fixed_bytes(500, 256) / 4 for p in payloads)


def test_a_tie_sends_the_fixed_length_form() -> None:
    codec = HuffmanCodec.fit(np.arange(256)[None].repeat(4, 0), 256)  # every code 8 bits: the same size
    rows = np.arange(256)[None]
    assert len(codec.encode(rows)[0]) == fixed_bytes(256, 256)
    assert encode_payloads(codec, rows) == [bytes(range(256))]


def test_malformed_payloads_are_refused() -> None:
    codec = HuffmanCodec.fit(np.minimum(np.random.default_rng(0).geometric(0.5, (100, 8)) - 1, 9), 10)
    good = pack_fixed(np.array([[9, 0, 3]]), 10)[0]  # 12 bits, 4 of padding
    assert decode_payload(codec, good, 3).tolist() == [9, 0, 3]
    with pytest.raises(MalformedPayload, match="payload of 3 bytes is longer than the 2-byte fixed-length form"):
        decode_payload(codec, good + b"\x00", 3)
    with pytest.raises(MalformedPayload, match="padding bits are not zero"):
        decode_payload(codec, good[:1] + bytes([good[1] | 1]), 3)
    with pytest.raises(MalformedPayload, match=r"symbol 15 .* outside the alphabet \[0, 10\)"):
        decode_payload(codec, b"\xf0\x00", 3)
    with pytest.raises(MalformedPayload, match="count must be >= 0"):
        decode_payload(codec, b"", -1)
    with pytest.raises(ValueError):  # shorter than the fixed-length form: the entropy decoder refuses it
        decode_payload(codec, b"", 3)
    assert issubclass(MalformedPayload, ValueError)  # the server rejects that message only
    assert decode_payload(codec, b"", 0).size == 0
