"""`bottlenet_pp` on the smoke profile: the variants, a row whose bits are the real ANS bitstream (far below the 8-bit
raw feature), its FLOPs (encoder on the device, decoder on the server) and the cached rerun."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from engine.coding.learned import run_encoded
from engine.config import VariantConfig
from engine.data import ImageData, normalize
from engine.entropy import decode_payload, encode_payloads
from engine.methods import METHODS, RunContext
from engine.methods.bottlenet_pp import BottleNetPP, bottleneck_channels
from engine.models import split
from engine.profile import count_flops
from engine.profiles import PROFILES
from engine.training import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def run(small_data: ImageData, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunContext, VariantConfig, dict]:
    cache = tmp_path_factory.getbasetemp() / "encoding-cache"  # shared with test_encoders: one smoke base model
    cache.mkdir(exist_ok=True)
    ctx = RunContext(small_data, PROFILES.get("smoke"), cache)
    cfg = VariantConfig.make("bottlenet_pp", "conv4_x", ctx.profile.base_config(small_data.fingerprint), ratio=64)
    return ctx, cfg, METHODS.get("bottlenet_pp").run(cfg, ctx)


def test_variants_and_channels() -> None:
    base = PROFILES.get("smoke").base_config("x")  # width 0.125: 8 channels at the stem, 32 after conv4_x
    got = [(v.split, v.knob("ratio")) for v in METHODS.get("bottlenet_pp").variants(base, ["server_only", "stem",
                                                                                         "conv4_x", "device_only"])]
    assert got == [("stem", 16), ("stem", 64), ("conv4_x", 16), ("conv4_x", 64), ("conv4_x", 256)]
    assert [bottleneck_channels(32, r) for r in (16, 64, 256)] == [8, 2, 1]
    assert bottleneck_channels(8, 64) == 1  # never below one channel


def test_row_bits_far_below_the_raw_feature(run: tuple[RunContext, VariantConfig, dict]) -> None:
    _, _, row = run
    assert row["method"] == "bottlenet_pp" and row["split"] == "conv4_x" and row["test_images"] == 400
    assert row["split_feature_shape"] == [32, 8, 8] and row["feature_bits_8bit"] == 8 * 32 * 8 * 8
    assert row["feature_shape"] == [2, 4, 4] and row["compression_ratio"] == 64.0
    assert row["bits_raw"] == 8 * 2 * 4 * 4  # BottleNet++'s fixed-length 8 bits per latent element
    assert row["bitstream_verified"]
    assert row["bits_actual"] < row["feature_bits_8bit"] / 40
    assert row["bits_actual"] <= row["bits_raw"] + 16 and row["bits_ideal"] <= row["bits_raw"] + 8
    assert row["compression_ratio_bits"] == pytest.approx(32 * 2048 / row["bits_actual"])
    assert 0.0 <= row["accuracy"] <= 1.0


def test_flops_put_the_encoder_on_the_device(run: tuple[RunContext, VariantConfig, dict]) -> None:
    ctx, cfg, row = run
    model, _ = ctx.base(cfg.base)
    device, server = split(model, "conv4_x")
    x = torch.zeros(1, 3, 32, 32)
    assert row["encoder_flops"] == 2 * (32 * 2 * 2 * 2) * (4 * 4)  # 2x2 stride-2 conv, 32 -> 2 channels, 4x4 output
    assert row["decoder_flops"] == row["encoder_flops"]
    assert row["device_flops"] == count_flops(device.eval(), x) + row["encoder_flops"]
    assert row["server_flops"] == count_flops(server.eval(), device(x)) + row["decoder_flops"]
    assert row["encoder_flops_fraction"] == pytest.approx(row["encoder_flops"] / count_flops(model.eval(), x))


def test_bits_and_accuracy_are_the_bitstreams(run: tuple[RunContext, VariantConfig, dict],
                                              small_data: ImageData) -> None:
    """Reload the trained variant from its checkpoint and re-send the test set: stream sizes, decoded symbols and the
    accuracy from them are the row's."""
    ctx, cfg, row = run
    model, _ = ctx.base(cfg.base)
    device, server = split(model, "conv4_x")
    result = run_encoded(cfg, ctx, device, server, enc=BottleNetPP.encoding(cfg, 32))
    assert result.metrics["accuracy"] == row["accuracy"]
    enc = result.model.eval()
    symbols = enc.symbols(normalize(small_data.test_x, small_data.mean, small_data.std)).numpy()
    assert symbols.shape == (400, 32) and symbols.max() <= 255
    streams = encode_payloads(result.codec, symbols)
    assert np.mean([p.bits for p in streams]) == pytest.approx(row["bits_actual"])
    decoded = np.stack([decode_payload(result.codec, s, 32) for s in streams])
    assert np.array_equal(decoded, symbols)
    acc = float((enc.from_symbols(torch.from_numpy(decoded)).argmax(1) == small_data.test_y).float().mean())
    assert acc == pytest.approx(row["accuracy"])


def test_rerun_loads_the_trained_variant(run: tuple[RunContext, VariantConfig, dict]) -> None:
    ctx, cfg, row = run
    start = time.perf_counter()
    again = METHODS.get("bottlenet_pp").run(cfg, ctx)
    assert time.perf_counter() - start < row["eval_seconds"]
    for key in ("accuracy", "bits_actual", "bits_ideal", "device_flops", "encode_train_seconds"):
        assert again[key] == row[key]


@pytest.mark.parametrize("rule", [None, "payload"])  # before the shorter form; the shorter form in whole bytes
def test_a_checkpoint_measured_by_an_earlier_payload_rule_is_remeasured(run: tuple[RunContext, VariantConfig, dict],
                                                                         rule: str | None) -> None:
    """A cached encoder whose bits_actual an earlier payload rule measured gets that figure measured again (and
    saved back); the rest of its metrics stay."""
    ctx, cfg, row = run
    path = ctx.cache / "models" / f"encoded-{cfg.id}.pt"
    done = load_checkpoint(path)
    assert done is not None and done["bits_measured"] == "payload-bits"
    old = {k: v for k, v in done.items() if k != "bits_measured"}
    save_checkpoint({**old, "metrics": {**done["metrics"], "bits_actual": 1.0},
                     **({"bits_measured": rule} if rule else {})}, path)
    model, _ = ctx.base(cfg.base)
    device, server = split(model, "conv4_x")
    result = run_encoded(cfg, ctx, device, server, enc=BottleNetPP.encoding(cfg, 32))
    assert result.metrics["bits_actual"] == row["bits_actual"]
    assert result.metrics["bits_ideal"] == done["metrics"]["bits_ideal"]
    again = load_checkpoint(path)
    assert again["bits_measured"] == "payload-bits" and again["metrics"]["bits_actual"] == row["bits_actual"]
