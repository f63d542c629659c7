"""Uniform quantiser and Huffman codec of the `original` baseline: exact round trips, actual vs ideal sizes, the
Huffman bound, and a cross-check of the vectorised encoder against dahuffman's own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dahuffman.huffmancodec import PrefixCodec

from engine.coding.uniform import UniformQuantizer
from engine.entropy import CODECS, EntropyCodec, empirical_entropy_bits
from engine.entropy.huffman import HuffmanCodec
from engine.errors import UserError


def relu_like(rng: np.random.Generator, shape: tuple[int, ...], top: int = 255) -> np.ndarray:
    """Many zeros and a geometric-like tail, like quantised ReLU features."""
    x = np.minimum(rng.geometric(0.15, size=shape) - 1, top)
    x[rng.random(shape) < 0.5] = 0
    return x.astype(np.uint8)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return relu_like(rng, (64, 1024)), relu_like(rng, (12, 777))


@pytest.fixture(scope="module")
def codec(data: tuple[np.ndarray, np.ndarray]) -> HuffmanCodec:
    return HuffmanCodec.fit(data[0], 256)


def fibonacci_codec(n: int) -> HuffmanCodec:
    """Fibonacci counts give the deepest Huffman tree: code lengths up to n - 1 bits."""
    counts = [1, 1]
    while len(counts) < n:
        counts.append(counts[-1] + counts[-2])
    return HuffmanCodec.from_counts(np.array(counts))


# -- quantiser -----------------------------------------------------------------------------------------------------


def test_quantizer_levels_and_clamping() -> None:
    q = UniformQuantizer(bits=2).fit(torch.tensor([0.0, 3.0]))
    assert (q.lo, q.hi, q.levels, q.step) == (0.0, 3.0, 4, 1.0)
    x = torch.tensor([-5.0, 0.0, 0.4, 0.6, 1.0, 2.49, 2.51, 3.0, 100.0])
    assert q.quantize(x).tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 3]
    assert q.quantize(x).dtype == torch.uint8
    assert q.dequantize(q.quantize(x)).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert UniformQuantizer(bits=12).quantize(torch.zeros(3)).dtype == torch.int64


def test_quantizer_relu_range_and_error_bound() -> None:
    torch.manual_seed(0)
    train = torch.relu(torch.randn(200, 64, 4, 4)) * 3
    q = UniformQuantizer(8).fit(train)
    assert q.lo == 0.0 and q.hi == float(train.max())
    x = torch.rand(10_000) * q.hi
    sym = q.quantize(x)
    assert int(sym.min()) >= 0 and int(sym.max()) <= 255
    assert float((q.dequantize(sym) - x).abs().max()) <= q.step / 2 * (1 + 1e-5)
    assert int(q.quantize(torch.tensor([q.hi]))) == 255 and int(q.quantize(torch.tensor([q.lo]))) == 0


def test_quantizer_state_round_trip_and_degenerate_range() -> None:
    q = UniformQuantizer(6).fit(torch.tensor([-1.5, 2.25]))
    state = json.loads(json.dumps(q.state_dict()))
    r = UniformQuantizer.from_state(state)
    x = torch.linspace(-3, 3, 101)
    assert torch.equal(q.quantize(x), r.quantize(x)) and r.state_dict() == q.state_dict()
    flat = UniformQuantizer(8).fit(torch.zeros(10))
    assert flat.quantize(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        UniformQuantizer(0)


# -- Huffman codec -------------------------------------------------------------------------------------------------


def test_round_trip_exact(codec: HuffmanCodec, data: tuple[np.ndarray, np.ndarray]) -> None:
    _, test = data
    streams = codec.encode(test)
    assert len(streams) == len(test)
    for stream, row in zip(streams, test, strict=True):
        assert np.array_equal(codec.decode(stream, row.size), row)


def test_unseen_symbols_are_encodable() -> None:
    rng = np.random.default_rng(1)
    train = rng.integers(0, 4, size=(10, 500))  # only symbols 0..3 seen
    codec = HuffmanCodec.fit(train, 256)
    assert codec.counts.min() == 1 and codec.code_lengths.max() > codec.code_lengths[:4].max()
    test = rng.integers(0, 256, size=(5, 300))
    for stream, row in zip(codec.encode(test), test, strict=True):
        assert np.array_equal(codec.decode(stream, row.size), row)
    with pytest.raises(ValueError):
        codec.encode(np.array([[0, 256]]))


def test_long_codes_straddle_words() -> None:
    """Codes of up to 59 bits exercise codewords crossing 64-bit words and the decoder's long-code path."""
    codec = fibonacci_codec(60)
    assert codec.code_lengths.max() == 59
    rng = np.random.default_rng(2)
    test = rng.integers(0, 60, size=(7, 301))
    streams = codec.encode(test)
    assert [len(s) for s in streams] == ((codec.bits_per_image(test) + 7) // 8).tolist()
    reference = PrefixCodec(codec.code_table(), eof=-1)
    for stream, row in zip(streams, test, strict=True):
        assert np.array_equal(codec.decode(stream, row.size), row)
        assert list(reference.decode(stream))[: row.size] == row.tolist()
    with pytest.raises(ValueError):
        fibonacci_codec(70)  # lengths above 64 bits are refused


def test_bits_per_image_equals_stream_lengths(codec: HuffmanCodec, data: tuple[np.ndarray, np.ndarray]) -> None:
    _, test = data
    streams = codec.encode(test)
    bits = codec.bits_per_image(test)
    assert bits.tolist() == codec.code_lengths[test].sum(axis=1).tolist()  # the codewords, to the bit
    assert [len(s) for s in streams] == ((bits + 7) // 8).tolist()  # each stream: those bits, padded to a byte
    generic = EntropyCodec.bits_per_image(codec, test)  # the encode-based figure counts whole bytes
    assert ((generic >= bits) & (generic < bits + 8)).all()
    # Kraft: no prefix code spends less on average than the entropy of the symbols it codes
    assert bits.mean() >= test.shape[1] * empirical_entropy_bits(test) - 1e-9


def _bits(stream: bytes) -> str:
    return "".join(f"{b:08b}" for b in stream)


def test_bitstream_matches_dahuffman(codec: HuffmanCodec, data: tuple[np.ndarray, np.ndarray]) -> None:
    """dahuffman pads the last byte with the head of its EOF code where we pad with zeros: the payload bits agree."""
    _, test = data
    reference = PrefixCodec(codec.code_table(), eof=0)
    for stream, row in zip(codec.encode(test[:4]), test[:4], strict=True):
        theirs = reference.encode(row.tolist())
        payload = int(codec.code_lengths[row].sum())
        assert len(theirs) == len(stream)
        assert _bits(stream)[:payload] == _bits(theirs)[:payload]
        assert set(_bits(stream)[payload:]) <= {"0"}
        assert list(PrefixCodec(codec.code_table(), eof=-1).decode(stream))[: row.size] == row.tolist()


def test_dahuffman_builds_the_same_code(data: tuple[np.ndarray, np.ndarray]) -> None:
    from dahuffman import HuffmanCodec as Dahuffman

    train, _ = data
    counts = np.bincount(train.ravel(), minlength=256) + 1
    table = Dahuffman.from_frequencies({s: int(c) for s, c in enumerate(counts)}, eof=0).get_code_table()
    assert HuffmanCodec.fit(train, 256).code_table() == table


def test_huffman_bound_and_uniform(codec: HuffmanCodec) -> None:
    assert codec.entropy_bits <= codec.mean_code_length < codec.entropy_bits + 1
    kraft = (2.0 ** -codec.code_lengths.astype(float)).sum()
    assert kraft == pytest.approx(1.0)
    uniform = HuffmanCodec.fit(np.arange(256).repeat(40), 256)
    assert (uniform.code_lengths == 8).all() and uniform.mean_code_length == 8.0 == uniform.entropy_bits
    row = np.arange(256)[None].repeat(3, axis=0)
    assert uniform.bits_per_image(row).tolist() == [2048] * 3
    assert uniform.ideal_bits_per_image(row) == pytest.approx([2048.0] * 3)


def test_ideal_bits_and_empirical_entropy(codec: HuffmanCodec, data: tuple[np.ndarray, np.ndarray]) -> None:
    train, test = data
    expected = (-np.log2(codec.probs))[test].sum(axis=1)
    assert codec.ideal_bits_per_image(test) == pytest.approx(expected)
    assert empirical_entropy_bits(np.array([0, 0, 1, 1])) == 1.0
    assert empirical_entropy_bits(np.zeros(10, dtype=np.uint8)) == 0.0
    # the cross-entropy of the training data under its own smoothed model is close to its empirical entropy
    h = empirical_entropy_bits(train)
    assert h <= codec.ideal_bits_per_image(train).sum() / train.size < h + 0.05


def test_state_round_trip(codec: HuffmanCodec, data: tuple[np.ndarray, np.ndarray]) -> None:
    _, test = data
    state = json.loads(json.dumps(codec.state_dict()))
    restored = CODECS.get(state["codec"]).from_state(state)
    assert restored.code_table() == codec.code_table()
    assert restored.encode(test) == codec.encode(test)
    broken = dict(state, codes=[0] * codec.alphabet_size)
    with pytest.raises(ValueError, match="prefix"):
        HuffmanCodec.from_state(broken)
    torch_state = torch.load(_save(codec.state_dict()), weights_only=True)
    assert HuffmanCodec.from_state(torch_state).code_table() == codec.code_table()


def _save(obj: object) -> object:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_decode_rejects_truncated_stream(codec: HuffmanCodec, data: tuple[np.ndarray, np.ndarray]) -> None:
    _, test = data
    stream = codec.encode(test[:1])[0]
    with pytest.raises(ValueError):
        codec.decode(stream[: len(stream) // 2], test.shape[1])
    assert codec.decode(b"", 0).size == 0


def test_edge_shapes(codec: HuffmanCodec) -> None:
    assert codec.encode(np.zeros((3, 0), dtype=np.uint8)) == [b"", b"", b""]
    assert codec.encode(np.zeros((0, 5), dtype=np.uint8)) == []
    assert codec.bits_per_image(np.zeros((2, 0), dtype=np.uint8)).tolist() == [0, 0]
    one = np.array([[int(np.argmin(codec.code_lengths))]])
    shortest = int(codec.code_lengths.min())
    assert codec.bits_per_image(one).tolist() == [shortest] and len(codec.encode(one)[0]) == 1
    with pytest.raises(ValueError):
        codec.encode(np.zeros(5, dtype=np.uint8))


def test_registry() -> None:
    assert "huffman" in CODECS and CODECS.get("huffman") is HuffmanCodec
    with pytest.raises(UserError):
        CODECS.get("nope")
