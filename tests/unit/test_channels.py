"""Channel layers: measured SNR and flip rate against the requested ones, power normalisation, gradients through
the channel, seeded realisations, capacities against known values, and one more channel as one small class."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from engine.coding.channels import (
    CHANNELS,
    AWGNChannel,
    BinarySymmetricChannel,
    Channel,
    awgn_capacity_bps,
    binary_entropy,
    bsc_capacity,
    build_channel,
    normalize_power,
)
from engine.errors import UserError


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 7.5, 20.0])
def test_awgn_measured_snr_is_the_requested_one(snr_db: float) -> None:
    x = torch.randn(10, 20_000) * 3.0 + 1.0  # 10 images of 10^4 complex symbols each: 10^5 symbols
    channel = AWGNChannel(snr_db, seed=1).eval()
    y = channel(x)
    signal = normalize_power(x)
    noise_power = (y - signal).pow(2).sum() / (x.numel() / 2)  # per complex symbol
    measured = 10 * math.log10(1.0 / float(noise_power))
    assert abs(measured - snr_db) < 0.2


def test_power_is_normalised_per_image() -> None:
    x = torch.randn(4, 64) * torch.tensor([[0.1], [1.0], [10.0], [100.0]])
    s = normalize_power(x)
    power = s.pow(2).sum(1) / 32  # 32 complex symbols per image
    assert torch.allclose(power, torch.ones(4), atol=1e-5)


def test_awgn_is_seeded_and_differentiable() -> None:
    x = torch.randn(3, 16)
    a = AWGNChannel(5.0, seed=7).eval()(x)
    b = AWGNChannel(5.0, seed=7).eval()(x)
    c = AWGNChannel(5.0, seed=8).eval()(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    enc = nn.Linear(8, 16)
    out = AWGNChannel(10.0, seed=0)(enc(torch.randn(5, 8)))
    out.sum().backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0
    with pytest.raises(UserError, match="even number"):
        AWGNChannel(0.0)(torch.randn(2, 5))


def test_training_range_draws_each_images_snr() -> None:
    channel = AWGNChannel(10.0, train_range=(0.0, 20.0), seed=3)
    x = torch.randn(2000, 200)
    noise = channel.train()(x) - normalize_power(x)
    per_image = 10 * torch.log10(1.0 / (noise.pow(2).sum(1) / 100))
    assert per_image.min() > -1.0 and per_image.max() < 21.0 and per_image.std() > 4.0  # uniform on [0, 20]: 5.8
    noise = channel.eval()(x) - normalize_power(x)  # evaluation: the nominal condition
    assert abs(10 * math.log10(1.0 / float(noise.pow(2).sum() / (x.numel() / 2))) - 10.0) < 0.2


@pytest.mark.parametrize("p", [0.01, 0.1, 0.3])
def test_bsc_flip_rate_is_p(p: float) -> None:
    x = torch.randn(20, 10_000)
    y = BinarySymmetricChannel(p, seed=2).eval()(x)
    sent = torch.where(x >= 0, 1.0, -1.0)
    assert set(y.unique().tolist()) <= {-1.0, 1.0}
    rate = float((y != sent).float().mean())
    se = math.sqrt(p * (1 - p) / x.numel())
    assert abs(rate - p) < 3 * se


def test_bsc_gradient_reaches_the_encoder() -> None:
    enc = nn.Sequential(nn.Linear(8, 32), nn.Tanh())
    torch.manual_seed(0)
    target = torch.randn(4, 32)
    out = BinarySymmetricChannel(0.1, seed=0)(enc(torch.randn(4, 8)))
    ((out - target) ** 2).sum().backward()
    assert enc[0].weight.grad is not None and enc[0].weight.grad.abs().sum() > 0
    assert float(BinarySymmetricChannel(0.0).eval()(torch.tensor([[0.3, -0.2]])).sum()) == 0.0  # +1, -1
    with pytest.raises(UserError, match="flip probability"):
        BinarySymmetricChannel(0.7)


def test_capacities_match_known_values() -> None:
    assert awgn_capacity_bps(1e6, 0.0) == pytest.approx(1e6)  # log2(2)
    assert awgn_capacity_bps(1e6, 10 * math.log10(3)) == pytest.approx(2e6)  # log2(4)
    assert awgn_capacity_bps(1e6, 20.0) == pytest.approx(1e6 * math.log2(101))
    assert AWGNChannel.capacity(10 * math.log10(15)) == pytest.approx(4.0)
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-3)
    assert bsc_capacity(0.0) == 1.0 and bsc_capacity(0.5) == pytest.approx(0.0)
    assert BinarySymmetricChannel.capacity(0.11) == pytest.approx(0.5, abs=1e-3)
    bsc = BinarySymmetricChannel(0.11)
    assert bsc.separate_uses(100, 0.11) == pytest.approx(200, rel=2e-3)
    assert bsc.separate_uses(100, 0.5) == math.inf
    assert AWGNChannel(0.0).uses(64) == 32 and bsc.uses(64) == 64


class BinaryErasure(Channel):
    """A binary erasure channel: each bit (sign) is erased (0) with probability eps; capacity 1 - eps."""

    name = "bec"
    condition_name = "eps"
    condition_label = "erasure probability"
    use_label = "channel bits"
    default_condition = 0.1

    @staticmethod
    def capacity(condition: float) -> float:
        return 1.0 - condition

    def forward(self, x: Tensor) -> Tensor:
        bits = BinarySymmetricChannel.binarize(x)
        keep = torch.rand(x.shape, generator=self.generator(x.device)) >= self.conditions(len(x), x.device)
        return bits * keep


def test_a_new_channel_is_one_small_class(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.coding.jscc import JsccConfig, build_jscc

    monkeypatch.setitem(CHANNELS._items, "bec", BinaryErasure)
    channel = build_channel("bec", 0.25, seed=4).eval()
    y = channel(torch.randn(10, 10_000))
    assert abs(float((y == 0).float().mean()) - 0.25) < 3 * math.sqrt(0.25 * 0.75 / 1e5)
    assert channel.separate_uses(75, 0.25) == pytest.approx(100)
    jc = JsccConfig("bec", uses=12, condition=0.2, eval_conditions=(0.1, 0.3))
    model = build_jscc(nn.Conv2d(3, 8, 3, 4, 1), nn.Sequential(nn.Flatten(), nn.LazyLinear(10)), (3, 32, 32), jc)
    assert isinstance(model.channel, BinaryErasure) and model.encoder.d == 12
    logits, _ = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    with pytest.raises(UserError, match="unknown channel"):
        build_channel("rayleigh")
