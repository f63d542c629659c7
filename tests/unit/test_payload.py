"""What one image's symbols send (engine.entropy.payload): the shorter of the fixed-length and the entropy-coded
form, its length stated to the bit and its form flagged, round-trips; a payload that is neither form is refused."""

from __future__ import annotations

import numpy as np
import pytest

from engine.entropy import (
    MalformedPayload,
    Payload,
    decode_payload,
    encode_payloads,
    fixed_bits,
    fixed_bytes,
    payload_bits,
)
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
    assert fixed_bits(1, 16) == 4 and fixed_bits(3, 10) == 12 and fixed_bits(9, 2) == 9 and fixed_bits(0, 5) == 0
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
    """Random symbols over alphabets 2..65536 and messages of 1..10000 symbols: each payload is the shorter form in
    bits (the entropy-coded one only when strictly shorter), `payload_bits` is its bits, and it decodes back."""
    rng = np.random.default_rng(1000 + k)
    codec = _codec(codec_name, k, _symbols(rng, k, (50, 64), skewed=k % 2 == 0))
    for d in LENGTHS:
        for skewed in (False, True):
            rows = _symbols(rng, k, (2, d), skewed)
            payloads = encode_payloads(codec, rows)
            streams, bits = codec.encode(rows), codec.bits_per_image(rows)
            for p, s, b, row in zip(payloads, streams, bits, rows, strict=True):
                coded = b < fixed_bits(d, k)
                assert p == (Payload(s, b, True) if coded else Payload(pack_fixed(row[None], k)[0], d * symbol_bits(k)))
                assert p.bits == min(b, fixed_bits(d, k)) and len(p.data) == (p.bits + 7) // 8
            assert payload_bits(codec, rows).tolist() == [p.bits for p in payloads]
            for p, row in zip(payloads, rows, strict=True):
                assert np.array_equal(decode_payload(codec, p, d), row)


def test_a_four_bit_symbol_sends_four_bits() -> None:
    """One 4-bit symbol (a 16-codeword vector codebook): 4 bits in one byte, whether the entropy coder would spend
    one byte or two; the frame states the form and the bits, not the payload's length."""
    rng = np.random.default_rng(0)
    skewed = np.minimum(rng.geometric(0.5, (4000, 1)) - 1, 15)
    rows = np.arange(16)[:, None]
    for codec in (AnsCodec.fit(skewed, 16, contexts=[0]), HuffmanCodec.fit(skewed, 16)):
        payloads = encode_payloads(codec, rows)
        assert all(len(p.data) == 1 and p.bits <= 4 for p in payloads)
        assert payload_bits(codec, rows).tolist() == [p.bits for p in payloads]
        assert [int(decode_payload(codec, p, 1)[0]) for p in payloads] == list(range(16))
    huffman = HuffmanCodec.fit(skewed, 16)
    payloads = encode_payloads(huffman, rows)
    assert payloads[0].bits == 1 and payloads[0].coded  # the commonest symbol: a 1-bit Huffman code
    assert payloads[15] == Payload(b"\xf0", 4, False)  # the rarest: its code is longer, so the fixed 4 bits go
    assert max(len(s) for s in huffman.encode(rows)) == 2  # the rare symbols' codes take more than a byte


def test_the_entropy_coded_form_is_sent_when_shorter() -> None:
    rng = np.random.default_rng(3)
    train = np.minimum(rng.geometric(0.9, (20, 500)) - 1, 255)
    codec = HuffmanCodec.fit(train, 256)
    rows = np.minimum(rng.geometric(0.9, (4, 500)) - 1, 255)
    payloads = encode_payloads(codec, rows)
    assert [p.data for p in payloads] == codec.encode(rows) and all(p.coded for p in payloads)
    assert all(p.bits < fixed_bits(500, 256) / 4 for p in payloads)


def test_a_tie_sends_the_fixed_length_form() -> None:
    codec = HuffmanCodec.fit(np.arange(256)[None].repeat(4, 0), 256)  # every code 8 bits: the same size
    rows = np.arange(256)[None]
    assert codec.bits_per_image(rows).tolist() == [fixed_bits(256, 256)]
    assert encode_payloads(codec, rows) == [Payload(bytes(range(256)), 2048, False)]


def test_an_entropy_coded_payload_must_end_where_its_code_ends() -> None:
    rng = np.random.default_rng(5)
    codec = HuffmanCodec.fit(np.minimum(rng.geometric(0.9, (20, 64)) - 1, 15), 16)
    row = np.zeros((1, 64), dtype=np.int64)  # the shortest code 64 times: well under the 256-bit fixed form
    (good,) = encode_payloads(codec, row)
    assert good.coded and decode_payload(codec, good, 64).tolist() == [0] * 64
    data = good.data if good.bits % 8 else good.data + b"\x00"  # one more zero bit, inside the padding
    with pytest.raises(MalformedPayload, match=f"end at bit {good.bits}, not at the stated {good.bits + 1}"):
        decode_payload(codec, Payload(data, good.bits + 1, True), 64)


def test_malformed_payloads_are_refused() -> None:
    codec = HuffmanCodec.fit(np.minimum(np.random.default_rng(0).geometric(0.5, (100, 8)) - 1, 9), 10)
    good = pack_fixed(np.array([[9, 0, 3]]), 10)[0]  # 12 bits, 4 of padding
    assert decode_payload(codec, Payload(good, 12), 3).tolist() == [9, 0, 3]
    with pytest.raises(MalformedPayload, match="3 bytes cannot hold a payload of 12 bits"):
        decode_payload(codec, Payload(good + b"\x00", 12), 3)
    with pytest.raises(MalformedPayload, match="a fixed-length payload of 3 symbols has 12 bits, not 16"):
        decode_payload(codec, Payload(good, 16), 3)
    with pytest.raises(MalformedPayload, match="padding bits are not zero"):
        decode_payload(codec, Payload(good[:1] + bytes([good[1] | 1]), 12), 3)
    with pytest.raises(MalformedPayload, match=r"symbol 15 .* outside the alphabet \[0, 10\)"):
        decode_payload(codec, Payload(b"\xf0\x00", 12), 3)
    with pytest.raises(MalformedPayload, match="no shorter than the 12-bit fixed-length form"):
        decode_payload(codec, Payload(good, 12, True), 3)
    with pytest.raises(MalformedPayload, match="count must be >= 0"):
        decode_payload(codec, Payload(b"", 0), -1)
    with pytest.raises(ValueError):  # shorter than the fixed-length form: the entropy decoder refuses it
        decode_payload(codec, Payload(b"", 0, True), 3)
    assert issubclass(MalformedPayload, ValueError)  # the server rejects that message only
    assert decode_payload(codec, Payload(b"", 0), 0).size == 0
