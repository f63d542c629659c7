"""JSCC: config knobs, models sized to the channel, training through the channel on synthetic features, seeded
evaluation, cached split features, one `three_step` variant end to end, Fig. 5 as pure functions of a hand-made
table, and the `noisy` command on the smoke profile."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
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
    split_features,
    train_jscc,
)
from engine.coding.quantizers import ScalarCodebook
from engine.config import VariantConfig
from engine.data import ImageData
from engine.errors import UserError
from engine.fig5 import best_schemes, fig5_curves, fig5_report, fig5_variants, mismatch_curve
from engine.methods import METHODS, RunContext
from engine.profiles import PROFILES, Fig5Budget
from engine.store import ResultsStore, rows_to_frame

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


# ------------------------------------------------------------------------------------------------ on CIFAR (smoke)


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory, tmp_cache: Path, cifar: ImageData,
                 shared_tar: Path) -> Iterator[Path]:
    """One cache for this module (the smoke base model is trained once), the CIFAR tar as $COINFER_DATA."""
    from conftest import cache_sharing_data

    cache = cache_sharing_data(tmp_path_factory.mktemp("jscc"), tmp_cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COINFER_CACHE", str(cache))
        mp.setenv("COINFER_DATA", str(shared_tar))
        yield cache


def test_split_features_are_cached_per_device_part(small_data: ImageData, tmp_path: Path) -> None:
    torch.manual_seed(0)
    device = nn.Sequential(nn.Conv2d(3, 4, 3, 4, 1), nn.ReLU())
    first = split_features(device, small_data, 0.1, 0, train_images=100, cache=tmp_path)
    assert first.train_x.shape == (100, 4, 8, 8) and first.train_x.dtype == torch.float16
    assert len(first.val_y) == 120 and len(first.test_y) == len(small_data.test_y)
    assert len(list((tmp_path / "features").glob("*.pt"))) == 1
    again = split_features(device, small_data, 0.1, 0, train_images=100, cache=tmp_path)
    assert again.key == first.key and torch.equal(again.test_x, first.test_x)
    with torch.no_grad():
        device[0].weight.mul_(2)
    assert split_features(device, small_data, 0.1, 0, train_images=100, cache=tmp_path).key != first.key


def test_a_jscc_variant_end_to_end(small_data: ImageData, module_cache: Path) -> None:
    profile = PROFILES.get("smoke")
    base = profile.base_config(small_data.fingerprint)
    ctx = RunContext(small_data, profile, module_cache)
    jc = JsccConfig("awgn", uses=4, condition=10.0, train_range=(0.0, 20.0), eval_conditions=(0.0, 20.0),
                    realisations=2, epochs=1)
    cfg = VariantConfig.make("three_step", "conv4_x", base, encoder="jscc", snapshot="none", **jc.knobs())
    row = METHODS.get("three_step").run(cfg, ctx)
    assert row["curve_conditions"] == [0.0, 10.0, 20.0] and len(row["curve_accuracy_runs"][0]) == 2
    assert row["accuracy"] == row["curve_accuracy"][1] and 0.0 <= row["accuracy"] <= 1.0
    assert row["channel_uses"] == 4 and row["encoder_d"] == 8 and math.isnan(row["bits_actual"])
    assert row["sparsity"] == 0.0 and row["base_val_accuracy"] > 0 and row["val_images"] == 120
    assert row["feature_shape"] == [8]  # the device sends the encoder's 2k reals
    ResultsStore(module_cache / "results.sqlite").put(row)
    stored = ResultsStore(module_cache / "results.sqlite").get(cfg.id)
    assert stored["bits_actual"] is None and stored["curve_accuracy"] == row["curve_accuracy"]
    again = METHODS.get("three_step").run(cfg, ctx)  # the trained model is cached: same numbers, no training
    assert again["jscc_train_seconds"] == row["jscc_train_seconds"] and again["curve_accuracy"] == row["curve_accuracy"]
    ref_cfg = VariantConfig.make("three_step", "conv4_x", base, encoder="jscc", snapshot="none",
                                 **JsccConfig("none", uses=8, bits=1, epochs=1).knobs())
    ref = METHODS.get("three_step").run(ref_cfg, ctx)
    assert ref["bits_actual"] > 0 and ref["bits_raw"] == 8 and ref["channel_uses"] is None
    assert ref["codec"] == "AnsCodec" and 0.0 <= ref["val_accuracy"] <= 1.0


def test_noisy_command_runs_fig5_and_reports(small_data: ImageData, module_cache: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from engine.cli import main

    tiny = Fig5Budget(awgn_uses=(2,), bsc_bits=(8,), source=((8, 1),), snr_db=(0.0, 10.0), p=(0.02, 0.1), epochs=1,
                      train_images=None, realisations=2)
    monkeypatch.setitem(PROFILES._items, "smoke", dataclasses.replace(PROFILES.get("smoke"), fig5=tiny))
    assert main(["noisy", "--profile", "smoke", "--channel", "bsc"]) == 0
    out = capsys.readouterr().out
    assert "BSC: channel bits" in out and "8-bit Huffman feature" in out and "learned source coding" in out
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    ids = [v.id for v in fig5_variants(base, "smoke", ["bsc"])]
    store = ResultsStore(module_cache / "results.sqlite")
    assert len(ids) == 2 and all(i in store for i in ids)
    rows = store.table()
    assert ((rows["method"] == "original") & (rows["split"] == "conv4_x")).sum() == 1
    assert main(["noisy", "--profile", "smoke", "--channel", "bsc"]) == 0  # all stored: nothing measured again
    assert "0 variant(s) measured now" in capsys.readouterr().out
    assert main(["noisy", "--profile", "smoke", "--drop", "300"]) == 2
    assert "--drop" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ Fig. 5, pure

W = 1e6


def synthetic_rows(base_id: str = "b0") -> list[dict]:
    """A hand-made Fig. 5 table: base 80 % test / 82 % validation, so thresholds 78 % / 80 % at a 2-point drop."""
    common = {"method": "three_step", "split": "conv4_x", "base_id": base_id, "base_test_accuracy": 0.80,
              "base_val_accuracy": 0.82, "png_bits": 18000.0, "device_flops": 1.0, "server_flops": 1.0}

    def jscc(channel: str, uses: int, conds: list[float], val: list[float], test: list[float]) -> dict:
        return {**common, "id": f"{channel}{uses}", "knobs": {"encoder": "jscc", "snapshot": "none",
                                                              "jscc_channel": channel, "jscc_uses": uses},
                "accuracy": test[0], "bits_actual": None, "curve_conditions": conds, "curve_val_accuracy": val,
                "curve_accuracy": test, "curve_accuracy_std": [0.01] * len(conds)}

    def source(d: int, bits: float, val: float, test: float) -> dict:
        return {**common, "id": f"sc{d}", "knobs": {"encoder": "jscc", "snapshot": "none", "jscc_channel": "none",
                                                    "jscc_uses": d, "jscc_bits": 1},
                "accuracy": test, "val_accuracy": val, "bits_actual": bits, "bits_ideal": bits}

    snr = [0.0, 10.0, 20.0]
    p = [0.01, 0.1]
    return [
        jscc("awgn", 2, snr, [0.50, 0.79, 0.81], [0.50, 0.78, 0.80]),
        jscc("awgn", 8, snr, [0.75, 0.83, 0.84], [0.74, 0.82, 0.83]),
        jscc("awgn", 32, snr, [0.81, 0.84, 0.84], [0.80, 0.83, 0.83]),
        jscc("bsc", 16, p, [0.81, 0.79], [0.77, 0.77]),
        jscc("bsc", 64, p, [0.83, 0.81], [0.82, 0.80]),
        source(8, 10.0, 0.78, 0.77),
        source(16, 24.5, 0.81, 0.80),
        {**common, "id": "orig", "method": "original", "knobs": {"bits": 8}, "accuracy": 0.80,
         "bits_actual": 16000.0},
        {**common, "id": "pruned", "knobs": {"encoder": "jscc", "snapshot": 0, "jscc_channel": "awgn",
                                             "jscc_uses": 1}, "accuracy": 0.9, "curve_conditions": snr,
         "curve_val_accuracy": [1.0] * 3, "curve_accuracy": [1.0] * 3, "curve_accuracy_std": [0.0] * 3},
    ]


def test_fig5_awgn_picks_the_smallest_k_meeting_the_validation_threshold() -> None:
    table = rows_to_frame(synthetic_rows())
    curves = fig5_curves(table, "awgn", drop=0.02, bandwidth_hz=W)
    jscc = curves[curves["scheme"] == "JSCC"].set_index("condition")
    assert jscc["uses"].to_dict() == {0.0: 32, 10.0: 8, 20.0: 2}  # the pruned row is not Fig. 5's
    assert jscc["cost"].to_dict() == pytest.approx({0.0: 32e-6, 10.0: 8e-6, 20.0: 2e-6})
    assert jscc.loc[10.0, "accuracy"] == 0.82 and jscc.loc[0.0, "id"] == "awgn32"
    lsc = curves[curves["scheme"] == "learned source coding"].set_index("condition")
    assert set(lsc["bits"]) == {24.5}  # d=8 misses the 80 % validation threshold
    assert lsc.loc[10.0, "cost"] == pytest.approx(24.5 / (W * math.log2(11)))
    huff = curves[curves["scheme"] == "8-bit Huffman feature"].set_index("condition")
    assert huff.loc[20.0, "cost"] == pytest.approx(16000 / (W * math.log2(101)))
    png = curves[curves["scheme"] == "PNG input"].set_index("condition")
    assert png.loc[0.0, "cost"] == pytest.approx(18000 / W)
    best = best_schemes(curves).set_index("condition")["scheme"].to_dict()
    assert best == {0.0: "learned source coding", 10.0: "learned source coding", 20.0: "JSCC"}
    assert curves["meets"].all()


def test_fig5_bsc_counts_channel_bits() -> None:
    table = rows_to_frame(synthetic_rows())
    curves = fig5_curves(table, "bsc", drop=0.02)
    at = curves.set_index(["condition", "scheme"])
    assert at.loc[(0.01, "JSCC"), "cost"] == 16 and at.loc[(0.1, "JSCC"), "cost"] == 64
    h = -0.1 * math.log2(0.1) - 0.9 * math.log2(0.9)
    assert at.loc[(0.1, "learned source coding"), "cost"] == pytest.approx(24.5 / (1 - h))
    assert at.loc[(0.1, "PNG input"), "cost"] == pytest.approx(18000 / (1 - h))
    assert not at.loc[(0.01, "JSCC"), "meets"] and at.loc[(0.1, "JSCC"), "meets"]  # chosen on validation
    best = best_schemes(curves).set_index("condition")["scheme"].to_dict()
    assert best == {0.01: "JSCC", 0.1: "learned source coding"}
    report = fig5_report(table, ("awgn", "bsc"))
    assert "at or below learned source coding + ideal channel coding at snr_db [20.0]" in report
    assert "above it at p [0.1]" in report


def test_a_stricter_threshold_and_the_mismatch_curve() -> None:
    table = rows_to_frame(synthetic_rows())
    curves = fig5_curves(table, "awgn", drop=0.0)  # validation threshold 82 %
    jscc = curves[curves["scheme"] == "JSCC"].set_index("condition")["uses"].to_dict()
    assert jscc == {10.0: 8, 20.0: 8}  # nothing reaches 82 % at 0 dB
    assert "learned source coding" not in set(curves["scheme"])
    curve = mismatch_curve(table, "awgn8")
    assert curve["accuracy"].tolist() == [0.74, 0.82, 0.83] and curve["condition"].tolist() == [0.0, 10.0, 20.0]
    assert mismatch_curve(table, "nope").empty
    assert fig5_curves(pd.DataFrame(), "awgn").empty
