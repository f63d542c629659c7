"""Two-step and BottleNet++ encoders: shapes at every split and width, the paper's < 1 % FLOP bound, the encoded split
(straight-through gradient to the encoder, symbols in = logits out, deployed parts), and end-to-end training (frozen
or fine-tuned backbone, seeded, resumable)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import engine.coding.learned as learned
from engine.coding import FEATURE_CODINGS
from engine.coding.encoders import ENCODERS, TwoStepEncoder, default_stride, feature_shape, two_step
from engine.coding.learned import (
    EncodedResult,
    EncodedTraining,
    EncodingConfig,
    build_encoded,
    train_encoded,
)
from engine.coding.quantizers import ScalarCodebook
from engine.config import VariantConfig
from engine.data import ImageData, normalize, subset
from engine.entropy import decode_payload, encode_payloads
from engine.errors import UserError
from engine.methods import RunContext
from engine.models import END_POINTS, CifarResNet18, split, split_names
from engine.profile import count_flops, profile_parts
from engine.profiles import PROFILES
from engine.training import load_checkpoint, save_checkpoint

WIDTHS = (0.125, 0.25, 1.0)
FEATURE_SPLITS = [s for s in split_names(coarse_only=False) if s not in END_POINTS]


@pytest.fixture(scope="module")
def models() -> dict[float, CifarResNet18]:
    torch.manual_seed(0)
    return {w: CifarResNet18(w).eval() for w in WIDTHS}


def split_features(model: CifarResNet18, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The device part's output at every feature split, from one pass along the chain of units."""
    outs = []
    for _, unit in model.units():
        x = unit(x)
        outs.append(x)
    order = split_names(coarse_only=False)  # the n-th point ends the n-th unit of the chain
    return {p: outs[order.index(p) - 1] for p in FEATURE_SPLITS}


@pytest.mark.parametrize("width", WIDTHS)
def test_shapes_at_every_split(models: dict[float, CifarResNet18], width: float) -> None:
    with torch.no_grad():
        features = split_features(models[width], torch.randn(2, 3, 32, 32))
    for point, feature in features.items():
        device, _ = split(models[width], point)
        shape = feature_shape(device, (3, 32, 32))
        assert shape == tuple(feature.shape[1:])
        for name, kw in (("two_step", {}), ("two_step", {"d": 0}), ("bottleneck", {"channels": 3})):
            enc, dec = ENCODERS.get(name)(shape, **kw)
            with torch.no_grad():
                latent = enc(feature)
                assert tuple(latent.shape[1:]) == tuple(enc.latent_shape)
                assert dec(latent).shape == feature.shape, (point, name, kw)
        enc, _ = two_step(shape)
        c, h, w = shape
        s = default_stride(h, w)
        assert enc.latent_shape == (32,) and enc.channels == max(1, c // 4)
        assert enc.map_shape == (max(1, c // 4), h // s, w // s) and min(h // s, w // s) == min(h, w, 8)


@pytest.mark.parametrize("width", WIDTHS)
def test_encoder_flop_bound(models: dict[float, CifarResNet18], width: float) -> None:
    """Default knobs: encoder + decoder under 1 % of the whole network's FLOPs at every split (Shao & Zhang 2020's
    bound), and the counted FLOPs are exactly 2 x (conv MACs + FC MACs)."""
    model = models[width]
    x = torch.zeros(1, 3, 32, 32)
    whole = count_flops(model, x)
    with torch.no_grad():
        features = split_features(model, x)
    for point, feature in features.items():
        c, h, w = feature.shape[1:]
        enc, dec = two_step((c, h, w))
        enc_flops, dec_flops = count_flops(enc, feature), count_flops(dec, enc(feature))
        k, (_, mh, mw) = enc.channels, enc.map_shape
        assert enc_flops == 2 * (c * k * h * w + k * mh * mw * 32)
        assert dec_flops == enc_flops
        assert (enc_flops + dec_flops) / whole < 0.01, (width, point, (enc_flops + dec_flops) / whole)
        benc, bdec = ENCODERS.get("bottleneck")((c, h, w), max(1, c // 4))
        assert count_flops(benc, feature) == 2 * c * max(1, c // 4) * h * w
        assert (count_flops(benc, feature) + count_flops(bdec, benc(feature))) / whole < 0.01


def test_any_stride_covers_the_map() -> None:
    assert TwoStepEncoder((16, 8, 8), channels=4, d=8, stride=3).map_shape == (4, 3, 3)  # padded to 9x9
    with pytest.raises(UserError):
        TwoStepEncoder((16, 8, 8), channels=4, d=8, stride=0)
    assert default_stride(32, 32) == 4 and default_stride(8, 8) == 1 and default_stride(28, 28) == 2


# -- the encoded split --------------------------------------------------------------------------------------------


def _encoded(model: CifarResNet18, point: str = "conv4_x", **knobs: object):  # noqa: ANN202
    device, server = split(model, point)
    return build_encoded(device, server, (3, 32, 32), EncodingConfig(**knobs))


def test_gradient_reaches_encoder_and_device(models: dict[float, CifarResNet18]) -> None:
    torch.manual_seed(1)
    enc = _encoded(CifarResNet18(0.125), "conv3_x")
    enc.train()
    logits, qloss = enc(torch.randn(4, 3, 32, 32))
    (nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + qloss).backward()
    for module in (enc.encoder.conv, enc.encoder.fc, enc.device_part[0][0], enc.decoder.fc):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    assert enc.quantizer.codewords.grad.abs().sum() > 0


def test_symbols_in_logits_out(models: dict[float, CifarResNet18]) -> None:
    """In eval mode the quantised forward pass, the symbols -> server path and the deployed parts agree."""
    torch.manual_seed(2)
    enc = _encoded(models[0.125], "conv4_x", quantizer="vector", codebook=16, groups=4).eval()
    x = torch.randn(5, 3, 32, 32)
    logits, _ = enc(x)
    symbols = enc.symbols(x)
    assert symbols.shape == (5, 4) and symbols.dtype == torch.int64 and int(symbols.max()) < 16
    assert torch.allclose(enc.from_symbols(symbols), logits, atol=1e-5)
    device, server = enc.deployed_parts()
    assert torch.equal(device(x), symbols)
    assert torch.allclose(server(device(x)), logits, atol=1e-5)
    prof = profile_parts(device, server, "conv4_x", (3, 32, 32), 10, time_device=False)
    base_device, base_server = split(models[0.125], "conv4_x")
    feature = base_device(torch.zeros(1, 3, 32, 32))
    latent = enc.encoder(feature)
    search = 2 * 4 * 16 * 8  # the codebook search: a [1 x 8] x [8 x 16] product for each of 4 groups
    assert prof["device_flops"] == count_flops(base_device, torch.zeros(1, 3, 32, 32)) + count_flops(
        enc.encoder, feature) + search
    assert prof["server_flops"] == count_flops(base_server, feature) + count_flops(enc.decoder, latent)


def test_channel_slot_is_identity_by_default(models: dict[float, CifarResNet18]) -> None:
    enc = _encoded(models[0.125]).eval()
    x = torch.randn(3, 3, 32, 32)
    assert isinstance(enc.channel, nn.Identity)
    clean, _ = enc(x)

    class Flip(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return -z

    enc.channel = Flip()
    assert not torch.allclose(enc(x)[0], clean)
    assert torch.allclose(enc.from_symbols(enc.symbols(x)), enc(x)[0], atol=1e-5)


def test_pruned_device_part_sets_the_encoder_shape() -> None:
    """A device part whose output has fewer channels (as after activation pruning) gets a matching encoder."""
    device = nn.Sequential(nn.Conv2d(3, 5, 3, 2, 1), nn.ReLU())
    server = nn.Sequential(nn.Conv2d(5, 7, 3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(7, 10))
    enc = build_encoded(device, server, (3, 32, 32), EncodingConfig(d=12, bits=3))
    assert enc.encoder.in_shape == (5, 16, 16) and enc.encoder.channels == 1 and enc.encoder.map_shape == (1, 8, 8)
    assert isinstance(enc.quantizer, ScalarCodebook) and enc.quantizer.alphabet_size == 8
    assert enc.eval()(torch.randn(2, 3, 32, 32))[0].shape == (2, 10)


def test_encoding_knobs() -> None:
    enc = EncodingConfig.from_knobs({"enc_d": 16, "enc_bits": 3, "snapshot": 2, "bits": 8})
    assert (enc.d, enc.bits, enc.quantizer) == (16, 3, "scalar")
    assert enc.knobs() == {"enc_d": 16, "enc_bits": 3}
    assert EncodingConfig.from_knobs(enc.knobs()) == enc
    with pytest.raises(UserError):
        EncodingConfig.from_knobs({"enc_dd": 3})
    with pytest.raises(UserError):
        EncodingConfig(backbone="half")


# -- training -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_ctx(small_data: ImageData, tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    """The smoke profile on `small_data`, with a cache shared with test_bottlenet_pp (one smoke base model)."""
    cache = tmp_path_factory.getbasetemp() / "encoding-cache"
    cache.mkdir(exist_ok=True)
    return RunContext(small_data, PROFILES.get("smoke"), cache)


@pytest.fixture(scope="module")
def base_model(smoke_ctx: RunContext, small_data: ImageData) -> CifarResNet18:
    model, _ = smoke_ctx.base(smoke_ctx.profile.base_config(small_data.fingerprint))
    return model


@pytest.fixture(scope="module")
def tiny_data(small_data: ImageData) -> ImageData:
    """400 training and 200 test images: the training mechanics, not the accuracy, are under test here."""
    return subset(small_data, 400, 200, seed=1)


BUDGET = EncodedTraining(epochs=1, batch_size=128, calibration_images=200)


@pytest.fixture(scope="module")
def frozen(base_model: CifarResNet18, tiny_data: ImageData) -> EncodedResult:
    device, server = split(base_model, "conv4_x")
    return train_encoded(device, server, tiny_data, "conv4_x", EncodingConfig(backbone="frozen", d=24), BUDGET,
                         time_device=False)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_frozen_backbone_stays_and_finetuned_moves(base_model: CifarResNet18, tiny_data: ImageData,
                                                   frozen: EncodedResult) -> None:
    device, server = split(base_model, "conv4_x")
    before_dev, before_srv = _state(device), _state(server)
    tuned = train_encoded(device, server, tiny_data, "conv4_x", EncodingConfig(d=24), BUDGET, time_device=False)
    for part, before in ((device, before_dev), (server, before_srv)):
        assert all(torch.equal(v, before[k]) for k, v in part.state_dict().items())  # the caller's modules: untouched
    for name, before in (("device_part", before_dev), ("server_part", before_srv)):
        frozen_state = getattr(frozen.model, name).state_dict()
        tuned_state = getattr(tuned.model, name).state_dict()
        assert all(torch.equal(frozen_state[k], v) for k, v in before.items())  # weights and BN statistics
        assert any(not torch.equal(tuned_state[k], v) for k, v in before.items() if v.is_floating_point())
    m = frozen.metrics
    assert m["bitstream_verified"] and 0.0 <= m["accuracy"] <= 1.0
    assert m["bits_raw"] == 24 * 2 and m["symbols_per_image"] == 24 and m["alphabet_size"] == 4
    assert m["encoder_flops_fraction"] < 0.01 and m["codec_flops_fraction"] < 0.01
    assert frozen.profile["device_flops"] > m["encoder_flops"] > 0


def test_a_replicate_trains_on_its_base_model_s_split(base_model: CifarResNet18, tiny_data: ImageData,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another training seed moves the encoder's initial weights and batches, never the split: the validation images
    of the base model stay out of its training (a replicate checkpoint trained on another split is retrained)."""
    seeds: list[int] = []
    real = learned.train_val_split

    def recorded(data: ImageData, fraction: float, seed: int):  # noqa: ANN202
        seeds.append(seed)
        return real(data, fraction, seed)

    monkeypatch.setattr(learned, "train_val_split", recorded)
    device, server = split(base_model, "conv4_x")
    budget = dataclasses.replace(BUDGET, seed=1_000_003, split_seed=0)
    path = tmp_path / "encoded.pt"
    train_encoded(device, server, tiny_data, "conv4_x", EncodingConfig(backbone="frozen", d=8), budget, path,
                  time_device=False)
    assert seeds and set(seeds) == {0}
    saved = load_checkpoint(path)
    save_checkpoint({**saved, "split_seed": 1_000_003}, path)  # as one trained on the replicate's own split
    seeds.clear()
    train_encoded(device, server, tiny_data, "conv4_x", EncodingConfig(backbone="frozen", d=8), budget, path,
                  time_device=False)
    assert seeds and set(seeds) == {0} and load_checkpoint(path)["split_seed"] == 0  # trained again


def test_reported_bits_and_accuracy_are_the_bitstreams(frozen: EncodedResult, tiny_data: ImageData) -> None:
    """Re-encode the test set with the returned codec: the mean stream length, the decoded symbols and the accuracy
    from them are what the metrics say."""
    model, codec = frozen.model.eval(), frozen.codec
    symbols = model.symbols(normalize(tiny_data.test_x, tiny_data.mean, tiny_data.std)).numpy()
    streams = encode_payloads(codec, symbols)
    decoded = np.stack([decode_payload(codec, s, 24) for s in streams])
    assert np.array_equal(decoded, symbols)
    assert np.mean([p.bits for p in streams]) == pytest.approx(frozen.metrics["bits_actual"])
    assert codec.ideal_bits_per_image(symbols).mean() == pytest.approx(frozen.metrics["bits_ideal"])
    acc = float((model.from_symbols(torch.from_numpy(decoded)).argmax(1) == tiny_data.test_y).float().mean())
    assert acc == pytest.approx(frozen.metrics["accuracy"])
    assert frozen.metrics["bits_actual"] < frozen.metrics["feature_bits_8bit"] / 100


def test_training_is_seeded_and_resumes(base_model: CifarResNet18, tiny_data: ImageData, tmp_path: Path) -> None:
    device, server = split(base_model, "conv4_x")
    enc = EncodingConfig(d=8, epochs=2, quantizer="vector", codebook=16, groups=2)
    whole = train_encoded(device, server, tiny_data, "conv4_x", enc, BUDGET, tmp_path / "a.pt", time_device=False)

    class Stop(Exception):
        pass

    def interrupt(done: float, message: str) -> None:
        if message.startswith("encoder epoch 2/2"):
            raise Stop

    with pytest.raises(Stop):
        train_encoded(device, server, tiny_data, "conv4_x", enc, BUDGET, tmp_path / "b.pt", interrupt, False)
    assert (tmp_path / "b.partial.pt").exists() and not (tmp_path / "b.pt").exists()
    resumed = train_encoded(device, server, tiny_data, "conv4_x", enc, BUDGET, tmp_path / "b.pt", time_device=False)
    assert not (tmp_path / "b.partial.pt").exists()
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    for key in ("accuracy", "bits_actual", "bits_ideal"):
        assert whole.metrics[key] == resumed.metrics[key]
    cached = train_encoded(device, server, tiny_data, "conv4_x", enc, BUDGET, tmp_path / "b.pt", interrupt, False)
    assert cached.metrics == resumed.metrics and cached.codec.encode(np.zeros((1, 2), dtype=np.int64)) == \
        resumed.codec.encode(np.zeros((1, 2), dtype=np.int64))
    torch.manual_seed(12345)  # another history of the process's generator (a sweep worker's earlier jobs)
    again = train_encoded(device, server, tiny_data, "conv4_x", enc, BUDGET, time_device=False)
    assert all(torch.equal(a[k], again.model.state_dict()[k]) for k in a)
    assert again.metrics["bits_actual"] == whole.metrics["bits_actual"]


def test_feature_coding_for_three_step(smoke_ctx: RunContext, tiny_data: ImageData) -> None:
    """The coding registered as "two_step": deployed parts, accuracy, bits and extra columns that do not collide with
    profile_parts' keys; the trained variant is cached under its config id."""
    ctx = RunContext(tiny_data, smoke_ctx.profile, smoke_ctx.cache)
    base = ctx.profile.base_config(tiny_data.fingerprint)
    model, _ = ctx.base(base)
    device, server = split(model, "conv5_x")
    cfg = VariantConfig.make("three_step", "conv5_x", base, encoder="two_step", enc_d=8, enc_bits=1)
    coded = FEATURE_CODINGS.get("two_step").measure(device, server, cfg, ctx)
    prof = profile_parts(coded.device, coded.server, "conv5_x", (3, 32, 32), 10, time_device=False)
    assert not set(prof) & set(coded.extra) and set(coded.bits) == {"bits_actual", "bits_ideal", "bits_raw"}
    assert prof["feature_shape"] == [8] and coded.bits["bits_raw"] == 8.0
    assert (ctx.cache / "models" / f"encoded-{cfg.id}.pt").exists()
    assert math.isfinite(coded.accuracy) and coded.extra["encoder_d"] == 8


def test_a_variant_s_encoder_trains_in_its_base_model_s_precision(tiny_data: ImageData, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    budgets = []
    monkeypatch.setattr(learned, "train_encoded", lambda *args: budgets.append(args[5]))
    ctx = RunContext(tiny_data, PROFILES.get("quick-bf16"), tmp_path)
    for precision in ("bf16", "auto"):
        base = PROFILES.get("smoke").base_config(tiny_data.fingerprint)
        cfg = VariantConfig.make("three_step", "conv5_x", dataclasses.replace(base, precision=precision),
                                 encoder="two_step", enc_d=8, enc_bits=1)
        learned.run_encoded(cfg, ctx, nn.Identity(), nn.Identity())
    assert [b.precision for b in budgets] == ["bf16", "auto"]
