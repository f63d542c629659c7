"""Learned quantisers (nearest codeword, straight-through gradient, commitment loss, data placement) and the ANS
entropy codec of their symbols (exact round trips, real stream sizes against the ideal, the short-message trick)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.coding.quantizers import QUANTIZERS, ScalarCodebook, UniformRounding, VectorCodebook
from engine.entropy import CODECS, EntropyCodec
from engine.entropy.ans import AnsCodec
from engine.errors import UserError

# -- nearest-codeword assignment -----------------------------------------------------------------------------------


def test_scalar_codebook_picks_the_nearest_codeword() -> None:
    q = ScalarCodebook(d=2, bits=2)
    with torch.no_grad():
        q.codewords.copy_(torch.tensor([[-1.0, -0.2, 0.1, 0.9], [0.5, -0.5, 2.0, -2.0]]))
    y = torch.tensor([[-0.7, 0.3], [0.0, -1.4], [0.6, 1.3], [-0.16, 5.0]])
    # dim 0: -0.7 -> -1.0 (0); 0.0 -> 0.1 (2); 0.6 -> 0.9 (3); -0.16 -> -0.2 (1)
    # dim 1: 0.3 -> 0.5 (0); -1.4 -> -2.0 (3); 1.3 -> 2.0 (2); 5.0 -> 2.0 (2)
    assert q.quantize(y).tolist() == [[0, 0], [2, 3], [3, 2], [1, 2]]
    out = q(y)
    assert torch.allclose(out.values, torch.tensor([[-1.0, 0.5], [0.1, -2.0], [0.9, 2.0], [-0.2, 2.0]]))
    assert torch.equal(q.dequantize(out.symbols), out.values)


def test_scalar_assignment_matches_brute_force() -> None:
    torch.manual_seed(0)
    q = ScalarCodebook(d=16, bits=3)
    with torch.no_grad():
        q.codewords.copy_(torch.randn(16, 8))
    y = torch.randn(300, 16)
    brute = torch.stack([(y[:, j, None] - q.codewords[j]).abs().argmin(1) for j in range(16)], 1)
    assert torch.equal(q.quantize(y), brute)
    err = (q(y).values - y).abs()
    assert torch.allclose(err, (y[:, :, None] - q.codewords[None]).abs().min(-1).values)


def test_vector_codebook_picks_the_nearest_codeword() -> None:
    torch.manual_seed(1)
    q = VectorCodebook(d=12, size=32, groups=3)
    y = torch.randn(200, 12)
    idx = q.quantize(y)
    assert idx.shape == (200, 3) and q.symbols_per_image == 3 and q.raw_bits == 15.0
    for g in range(3):
        sub = y[:, 4 * g:4 * g + 4]
        assert torch.equal(idx[:, g], torch.cdist(sub, q.codewords[g]).argmin(1))
    assert torch.allclose(q.dequantize(idx), q(y).values)


def test_uniform_rounding_levels_and_ranges() -> None:
    q = UniformRounding(4, bits=2)  # levels -1, -1/3, 1/3, 1
    y = torch.tensor([[-1.0, -0.34, 0.3, 7.0]])
    assert q.quantize(y).tolist() == [[0, 1, 2, 3]]
    assert torch.allclose(q(y).values, torch.tensor([[-1.0, -1 / 3, 1 / 3, 1.0]]))
    sig = UniformRounding((2, 3, 3), bits=8, lo=0.0, hi=1.0, contexts="channel")
    x = torch.rand(5, 2, 3, 3)
    s = sig.quantize(x)
    assert s.shape == (5, 18) and int(s.max()) <= 255 and sig.raw_bits == 8 * 18
    assert float((sig.dequantize(s) - x).abs().max()) <= 0.5 / 255 + 1e-6
    assert sig.contexts().tolist() == [0] * 9 + [1] * 9
    assert UniformRounding((2, 3, 3)).contexts().tolist() == list(range(18))


# -- gradients -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["scalar", "vector", "uniform"])
def test_straight_through_gradient_reaches_the_encoder(name: str) -> None:
    """The encoder's gradient through the quantiser equals its gradient through an identity (straight through)."""
    torch.manual_seed(2)
    quantizer = {"scalar": ScalarCodebook(8, 2), "vector": VectorCodebook(8, 16, 2), "uniform": UniformRounding(8, 2)}
    q = quantizer[name]
    encoder = torch.nn.Linear(5, 8)
    x, target = torch.randn(32, 5), torch.randn(32, 8)
    out = q(torch.tanh(encoder(x)))
    F.mse_loss(out.values, target, reduction="sum").backward()
    via_quantizer = encoder.weight.grad.clone()
    assert via_quantizer.abs().sum() > 0
    encoder.zero_grad()
    y = torch.tanh(encoder(x))
    (2 * (out.values.detach() - target) * y).sum().backward()  # d/dy of the same loss, evaluated at the quantised value
    assert torch.allclose(via_quantizer, encoder.weight.grad, atol=1e-5)


def test_commitment_and_codebook_losses() -> None:
    """loss = ||sg(y) - e||^2 + beta ||y - sg(e)||^2: codewords move towards the latents, the latents (beta-weighted)
    towards their codewords."""
    q = ScalarCodebook(d=1, bits=1, beta=0.25)
    with torch.no_grad():
        q.codewords.copy_(torch.tensor([[-1.0, 1.0]]))
    y = torch.tensor([[0.5], [0.8]], requires_grad=True)
    out = q(y)
    assert float(out.loss.detach()) == pytest.approx((0.25 + 0.04) / 2 * 1.25)
    out.loss.backward()
    assert q.codewords.grad.flatten().tolist() == pytest.approx([0.0, 2 * (1.0 - 0.65)])  # d/de mean((e - y)^2)
    assert y.grad.flatten().tolist() == pytest.approx([0.25 * 2 * (0.5 - 1.0) / 2, 0.25 * 2 * (0.8 - 1.0) / 2])


def test_disabled_quantiser_passes_through_and_still_trains_codewords() -> None:
    q = ScalarCodebook(4, 2)
    q.enabled = False
    y = torch.randn(6, 4, requires_grad=True)
    out = q(y)
    assert torch.equal(out.values, y)
    out.loss.backward()
    assert q.codewords.grad.abs().sum() > 0 and y.grad is None


# -- placing codewords on data --------------------------------------------------------------------------------------


def test_scalar_init_finds_clusters() -> None:
    torch.manual_seed(3)
    centres = torch.tensor([-0.9, -0.3, 0.2, 0.7])
    y = centres[torch.randint(0, 4, (4000, 3))] + 0.01 * torch.randn(4000, 3)
    q = ScalarCodebook(3, 2)
    before = float((q(y).values - y).pow(2).mean())
    q.init_from(y)
    for j in range(3):
        assert torch.allclose(q.codewords[j].sort().values, centres, atol=0.01)
    assert float((q(y).values - y).pow(2).mean()) < before / 20


def test_vector_init_recovers_distinct_points() -> None:
    torch.manual_seed(4)
    points = torch.randn(8, 6)
    y = points[torch.arange(400) % 8]
    q = VectorCodebook(6, size=8)
    q.init_from(y)
    assert float((q(y).values - y).abs().max()) < 1e-5  # every latent is its own codeword: zero distortion
    assert len(set(q.quantize(y).flatten().tolist())) == 8


def test_quantizer_registry_and_bad_knobs() -> None:
    assert set(QUANTIZERS) >= {"scalar", "vector", "uniform"}
    with pytest.raises(UserError):
        VectorCodebook(10, 16, groups=3)
    with pytest.raises(UserError):
        ScalarCodebook(4, bits=0)


# -- ANS entropy coding of the symbols -----------------------------------------------------------------------------


def draw(rng: np.random.Generator, probs: np.ndarray, n: int) -> np.ndarray:
    """n rows, column j drawn from probs[j]."""
    u = rng.random((n, len(probs), 1))
    return (probs.cumsum(1)[None] > u).argmax(2)


CASES = {  # alphabet, symbols per image, contexts ("dim": one per position, "chan": one per 64 positions, None)
    "2-bit scalar dims": (4, 32, "dim"),
    "vector one symbol": (1024, 1, "dim"),
    "8-bit channels": (256, 512, "chan"),
    "shared model": (16, 40, None),
    "ternary": (3, 25, "dim"),
}


@pytest.mark.parametrize("case", CASES)
def test_ans_round_trip_exact(case: str) -> None:
    k, d, kind = CASES[case]
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.full(k, 0.3), size=d)
    contexts = {"dim": np.arange(d), "chan": np.arange(d) // 64, None: None}[kind]
    codec = AnsCodec.fit(draw(rng, probs, 400), k, contexts)
    test = draw(rng, probs, 60)
    test[0] = rng.integers(0, k, size=d)  # symbols the training data may never have shown
    streams = codec.encode(test)
    for stream, row in zip(streams, test, strict=True):
        assert np.array_equal(codec.decode(stream, d), row)
    assert codec.bits_per_image(test).tolist() == [8 * len(s) for s in streams]
    restored = AnsCodec.from_state(json.loads(json.dumps(codec.state_dict())))
    assert restored.encode(test) == streams


def test_ans_sizes_near_the_ideal() -> None:
    """Long messages: within 1 % + 2 bytes of the cross-entropy; short ones: the raw-tail initial state saves most of
    the ~24 bits an ANS coder started from an empty state wastes."""
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.full(256, 0.3), size=8).repeat(128, axis=0)  # 8 channels x 128 positions
    codec = AnsCodec.fit(draw(rng, probs, 300), 256, np.arange(1024) // 128)
    test = draw(rng, probs, 50)
    actual, ideal = codec.bits_per_image(test), codec.ideal_bits_per_image(test)
    assert (actual <= 1.01 * ideal + 16).all() and actual.mean() >= ideal.mean() - 8
    short = rng.dirichlet(np.full(4, 0.5), size=32)
    fitted = AnsCodec.fit(draw(rng, short, 1000), 4, np.arange(32))
    naive = AnsCodec(fitted.counts, fitted.contexts, raw_count=0)  # no raw tail: an empty initial state
    sample = draw(rng, short, 300)
    tuned, plain = fitted.bits_per_image(sample).mean(), naive.bits_per_image(sample).mean()
    ideal = fitted.ideal_bits_per_image(sample).mean()
    assert plain - ideal > 16 and tuned - ideal < 12 and plain - tuned > 8


def test_ans_empirical_entropy_and_model() -> None:
    counts = np.array([[7, 1], [1, 3]])
    codec = AnsCodec(counts, [0, 1, 1])
    assert codec.probs.tolist() == [[0.875, 0.125], [0.25, 0.75]]
    sym = np.array([[0, 1, 1], [1, 0, 0]])
    expect = [-np.log2(0.875) - 2 * np.log2(0.75), -np.log2(0.125) - 2 * np.log2(0.25)]
    assert codec.ideal_bits_per_image(sym) == pytest.approx(expect)
    fitted = AnsCodec.fit(np.array([[0, 1], [0, 1], [1, 1]]), 2, [0, 1])
    assert fitted.counts.tolist() == [[3, 2], [1, 4]]  # add-one smoothed counts per context


def test_ans_rejects_bad_input() -> None:
    codec = AnsCodec.fit(np.zeros((10, 4), dtype=np.int64), 4, np.arange(4))
    with pytest.raises(ValueError):
        codec.encode(np.zeros((2, 5), dtype=np.int64))  # fitted on 4 symbols per image
    with pytest.raises(ValueError):
        codec.encode(np.array([[0, 1, 2, 4]]))  # outside the alphabet
    stream = codec.encode(np.array([[3, 2, 1, 0]]))[0]
    with pytest.raises(ValueError):
        codec.decode(b"", 4)
    assert codec.decode(b"", 0).size == 0
    assert isinstance(codec, EntropyCodec) and CODECS.get("ans") is AnsCodec
    assert codec.decode(stream, 4).tolist() == [3, 2, 1, 0]


def test_ans_state_survives_weights_only_load() -> None:
    rng = np.random.default_rng(7)
    sym = rng.integers(0, 8, size=(50, 6))
    codec = AnsCodec.fit(sym, 8, np.arange(6))
    buf = io.BytesIO()
    torch.save(codec.state_dict(), buf)
    buf.seek(0)
    restored = AnsCodec.from_state(torch.load(buf, weights_only=True))
    assert restored.raw_count == codec.raw_count and restored.encode(sym) == codec.encode(sym)


def test_ans_message_of_a_few_symbols_is_their_digits() -> None:
    """One 8-bit vector-codebook index costs one byte; three decimal digits (1000 values, 10 bits) two."""
    rng = np.random.default_rng(8)
    one = AnsCodec.fit(rng.integers(0, 256, size=(300, 1)), 256, [0])
    sym = rng.integers(0, 256, size=(40, 1))
    streams = one.encode(sym)
    assert one.raw_count == 1 and {len(s) for s in streams} == {1}
    assert [one.decode(s, 1)[0] for s in streams] == sym[:, 0].tolist()
    three = AnsCodec(np.ones((3, 10), dtype=np.int64), np.arange(3), raw_count=3)
    assert three.encode(np.array([[9, 9, 9]])) == [(999).to_bytes(2, "little")]
    assert three.decode((999).to_bytes(2, "little"), 3).tolist() == [9, 9, 9]
    with pytest.raises(ValueError):
        three.decode((1000).to_bytes(2, "little"), 3)


def test_the_traced_scalar_codebook_assigns_as_the_measured_one_and_exports_to_onnx() -> None:
    """A bundle traces the dense nearest-codeword search (sort and searchsorted have no ONNX export); it picks the
    codewords the binary search picks when the row was measured, and the program exports."""
    import io

    torch.manual_seed(0)
    q = ScalarCodebook(d=16, bits=3).eval()
    with torch.no_grad():
        q.codewords.copy_(torch.randn(16, 8))  # unsorted, as training leaves them
    y = torch.randn(64, 16)
    idx, e = q._assign(y)
    dense_idx, dense_e = q._assign_dense(y)
    assert torch.equal(idx, dense_idx) and torch.equal(e, dense_e)

    class Symbols(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = q

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.q(x).symbols

    traced = torch.jit.trace(Symbols().eval(), y[:1])  # batch 1, as a bundle's programs are
    assert all(torch.equal(traced(y[i:i + 1]), idx[i:i + 1]) for i in range(8))
    torch.onnx.export(traced, (y[:1],), io.BytesIO(), opset_version=17, dynamo=False)
