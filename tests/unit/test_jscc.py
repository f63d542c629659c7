"""JSCC: config knobs, models sized to the channel, training through the channel on synthetic features and seeded
evaluation (no dataset)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.coding.channels import AWGNChannel, BinarySymmetricChannel
from engine.coding.jscc import (
    JsccConfig,
    SplitFeatures,
    _train_or_load,
    build_jscc,
    channel_accuracy,
    train_jscc,
)
from engine.coding.quantizers import ScalarCodebook
from engine.errors import UserError

# ------------------------------------------------------------------------------------------------ config, model


def test_knobs_round_trip_and_mistakes_are_one_line() -> None:
    jc = JsccConfig("bsc", uses=32, condition=0.1, train_range=(0.0, 0.2), eval_conditions=(0.05, 0.2))
    assert JsccConfig.from_knobs({**jc.knobs(), "jscc_train_range": [0.0, 0.2], "bits": 8}) == jc
    assert jc.grid == (0.05, 0.1, 0.2)  # the nominal condition joins the curve
    assert "condition" not in jc.training_key()  # a range-trained model does not depend on the nominal point
    with pytest.raises(UserError, match="unknown channel 'fading'"):
        JsccConfig("fading")
    with pytest.raises(UserError, match="flip probability"):
        JsccConfig("bsc", eval_conditions=(0.1, 0.9))
    with pytest.raises(UserError, match="unknown jscc knob 'jscc_snr'"):
        JsccConfig.from_knobs({"jscc_snr": 3})
    with pytest.raises(UserError, match="server"):
        JsccConfig(server="both")
    with pytest.raises(UserError, match="distill"):
        JsccConfig(distill=1.5)


def test_the_encoder_is_sized_to_the_channel() -> None:
    device, server = nn.Conv2d(3, 16, 3, 4, 1), nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    awgn = build_jscc(device, server, (3, 32, 32), JsccConfig("awgn", uses=6))
    assert awgn.encoder.d == 12 and isinstance(awgn.channel, AWGNChannel) and awgn.quantizer is None
    bsc = build_jscc(device, server, (3, 32, 32), JsccConfig("bsc", uses=20, condition=0.2))
    assert bsc.encoder.d == 20 and isinstance(bsc.channel, BinarySymmetricChannel) and bsc.channel.condition == 0.2
    ref = build_jscc(device, server, (3, 32, 32), JsccConfig("none", uses=8, bits=1))
    assert isinstance(ref.quantizer, ScalarCodebook) and ref.quantizer.raw_bits == 8
    logits, _ = awgn(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)


# ------------------------------------------------------------------------------------------------ synthetic training


def synthetic_features(n_train: int = 3000, n_eval: int = 1000, seed: int = 0) -> SplitFeatures:
    """Four classes whose [8, 2, 2] features are their class mean plus noise (linearly separable)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, 8, 2, 2, generator=g) * 2

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 4, (n,), generator=g)
        x = torch.relu(means[y] + 0.5 * torch.randn(n, 8, 2, 2, generator=g))
        return x.half(), y

    return SplitFeatures(*draw(n_train), *draw(n_eval), *draw(n_eval), key="synthetic")


class Head(nn.Module):
    """A server part: flatten + linear, trained with the decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


# k = 4 complex uses separate the four classes at every thread count (k = 2 trained to 0.75-0.94 accuracy by count)
@pytest.mark.parametrize("channel,uses,good,bad", [("awgn", 4, 20.0, -10.0), ("bsc", 8, 0.0, 0.4)])
def test_training_through_the_channel_learns_and_noise_costs_accuracy(channel: str, uses: int, good: float,
                                                                       bad: float) -> None:
    feats = synthetic_features()
    jc = JsccConfig(channel, uses=uses, condition=good, train_range=(min(good, bad), max(good, bad)), epochs=4,
                    batch_size=128, lr=1e-2, server="train", eval_conditions=(bad,), distill=0.0)
    model = build_jscc(nn.Identity(), Head(), (8, 2, 2), jc, seed=0)
    before = model.encoder.conv.weight.detach().clone()
    stats = train_jscc(model, feats, jc, seed=0)
    assert stats["jscc_train_steps"] == 4 * math.ceil(3000 / 128)
    assert not torch.equal(before, model.encoder.conv.weight)  # gradients reached the encoder through the channel
    clean = channel_accuracy(model, feats.test_x, feats.test_y, good, realisations=2, seed=0)
    noisy = channel_accuracy(model, feats.test_x, feats.test_y, bad, realisations=3, seed=0)
    assert len(clean) == 2 and len(noisy) == 3
    assert min(clean) > 0.9 and sum(noisy) / 3 < min(clean) - 0.1
    assert channel_accuracy(model, feats.test_x, feats.test_y, bad, 3, 0) == noisy  # seeded realisations
    assert len(set(noisy)) > 1  # and different from each other


def test_source_coding_reference_trains_with_learned_codewords() -> None:
    feats = synthetic_features()
    jc = JsccConfig("none", uses=4, bits=2, epochs=3, batch_size=128, lr=1e-2, server="train", distill=0.0)
    model = build_jscc(nn.Identity(), Head(), (8, 2, 2), jc)
    train_jscc(model, feats, jc)
    assert model.quantizer.enabled
    acc = channel_accuracy(model, feats.test_x, feats.test_y)
    assert len(acc) == 1 and acc[0] > 0.9


def test_a_trained_variant_does_not_depend_on_what_the_process_drew_before() -> None:
    """A sweep worker runs many jobs in one process: the coder's initial weights come from the variant's seed, not
    from the state the earlier jobs left in torch's global generator."""
    feats = synthetic_features(n_train=400, n_eval=100)
    jc = JsccConfig("awgn", uses=4, epochs=1, batch_size=128, lr=1e-2, server="frozen", distill=0.0)
    runs, server = [], Head()
    for history in (1, 2):
        torch.manual_seed(history)
        model, _, _, _ = _train_or_load(nn.Identity(), server, (8, 2, 2), jc, feats, 0, 0.1, 100, None, None)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
