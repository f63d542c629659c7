"""JSCC on CIFAR (the smoke profile): cached split features, one `three_step` variant end to end, and the `noisy`
command."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.coding.jscc import (
    JsccConfig,
    split_features,
)
from engine.config import VariantConfig
from engine.data import ImageData
from engine.fig5 import fig5_variants
from engine.methods import METHODS, RunContext
from engine.profiles import PROFILES, Fig5Budget
from engine.store import ResultsStore

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
    assert "BSC: channel bits" in out and "8-bit Huffman feature (ideal)" in out and "learned source coding" in out
    assert "\nBSC: JSCC " in out  # the verdict, then a sentence per condition
    assert "\nAt p = 0.02, JSCC " in out or "\nAt p = 0.02 no JSCC model meets" in out
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
