"""Selections (versioned JSON of a chosen variant, validated on import) and deployable bundles (device and server
programs, codec tables, manifest of sha256 digests)."""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.config import VariantConfig
from engine.data import ImageData, normalize
from engine.deploy.bundle import load_bundle
from engine.deploy.export import write_bundle
from engine.deploy.selection import parse_selection, selection_json, variant_config
from engine.errors import UserError
from engine.latency import MEMORY_FIGURES
from engine.methods import METHODS, RunContext
from engine.profiles import PROFILES
from engine.store import ResultsStore, rows_to_frame

ENV = {"device": "pi3", "server": "rtx2080ti", "rate_bps": 320e3, "accuracy_drop": 0.02, "note": math.nan}


@pytest.fixture(scope="module")
def ctx(small_data: ImageData, tmp_cache: Path) -> RunContext:
    return RunContext(small_data, PROFILES.get("smoke"), tmp_cache)


@pytest.fixture(scope="module")
def row(ctx: RunContext) -> dict:
    cfg = VariantConfig.make("original", "conv5_x", ctx.profile.base_config(ctx.data.fingerprint), bits=8)
    return METHODS.get("original").run(cfg, ctx)


def test_selection_round_trips_through_json(row: dict) -> None:
    doc = selection_json(row, ENV)
    text = json.dumps(doc, allow_nan=False)  # finite numbers only
    back = parse_selection(text.encode())
    assert back["id"] == row["id"] and back["format"] == "coinfer-selection" and back["version"] == 1
    cfg = variant_config(back)
    assert (cfg.method, cfg.split, cfg.id) == ("original", "conv5_x", row["id"])
    assert back["metrics"]["accuracy"] == pytest.approx(row["accuracy"])
    assert back["metrics"]["bits_actual"] == pytest.approx(row["bits_actual"])
    assert "note" not in back["environment"] and back["environment"]["rate_bps"] == 320e3
    assert back["trained_on"] == row["trained_on"] and back["trained_on"].startswith("cpu, ")
    # a row of the pandas table gives the same document
    series = rows_to_frame([row]).iloc[0]
    assert selection_json(series, ENV)["config"] == doc["config"]
    # an export written before the base config had `sizes` imports as the same variant; a wrong type is refused
    older = json.loads(text)
    del older["config"]["base"]["sizes"]
    assert variant_config(parse_selection(json.dumps(older).encode())).id == row["id"]
    older["config"]["base"]["sizes"] = ["16"]
    with pytest.raises(UserError, match="base field 'sizes'"):
        parse_selection(json.dumps(older).encode())
    del older["config"]["base"]["sizes"]
    older["config"]["base"]["scales"] = ["half"]
    with pytest.raises(UserError, match="base field 'scales'"):
        parse_selection(json.dumps(older).encode())


def test_list_knobs_and_missing_figures(ctx: RunContext) -> None:
    base = ctx.profile.base_config(ctx.data.fingerprint)
    cfg = VariantConfig.make("two_step_pruning", "conv3_x", base, bits=8, step1=0.5, step1_levels=(0.25, 0.5))
    row = {"id": cfg.id, "method": cfg.method, "split": cfg.split, "knobs": {"bits": 8, "step1": 0.5,
           "step1_levels": [0.25, 0.5]}, "dataset_fingerprint": base.dataset, "width": base.width, "seed": 0,
           "base_id": base.id, "accuracy": 0.5, "bits_ideal": math.nan, "bits_actual": math.inf}
    doc = parse_selection(json.dumps(selection_json(row, {})))
    assert variant_config(doc) == cfg
    assert doc["metrics"] == {"accuracy": 0.5}
    with pytest.raises(UserError, match="another budget"):
        selection_json({**row, "base_id": "0" * 16}, {})


def _eager_labels(ctx: RunContext, cfg: VariantConfig, images: torch.Tensor) -> torch.Tensor:
    """The variant's predictions with its deployed parts run eagerly, one batch."""
    deployed = METHODS.get(cfg.method).deploy(cfg, ctx)
    x = normalize(images, ctx.data.mean, ctx.data.std)
    with torch.no_grad():
        if deployed.coding == "png":
            return deployed.server(x).argmax(1)
        return deployed.server(deployed.device(x)).argmax(1)


@pytest.mark.parametrize(("split", "name"), [("conv3_x", "bundle"), ("stem", "bundle.zip"),
                                             ("server_only", "bundle"), ("device_only", "bundle.zip")])
def test_bundle_reproduces_the_variant(ctx: RunContext, tmp_path: Path, split: str, name: str) -> None:
    cfg = VariantConfig.make("original", split, ctx.profile.base_config(ctx.data.fingerprint), bits=8)
    out = write_bundle(cfg, ctx, tmp_path / name, metrics={"accuracy": 0.5}, environment=ENV)
    assert out.is_dir() == (name == "bundle")
    bundle = load_bundle(out)
    assert bundle.id == cfg.id and bundle.config() == cfg and bundle.selection["metrics"] == {"accuracy": 0.5}
    assert bundle.coding == {"server_only": "png", "device_only": "label"}.get(split, "entropy")
    images = ctx.data.test_x[:24]
    assert torch.equal(bundle.predict(images), _eager_labels(ctx, cfg, images))
    if bundle.coding == "entropy":
        assert bundle.quantizer["kind"] == "uniform" and bundle.quantizer["bits"] == 8
        payload, count = bundle.encode(bundle.device_output(images[0]))
        assert count == bundle.meta["symbols_per_image"] and payload.bits < 8 * count  # Huffman beats 8 bits/symbol
    if bundle.coding == "label":  # the label in ceil(log2 10) = 4 bits, read back by the server
        payload, count = bundle.encode(bundle.device_output(images[0]))
        assert (payload.bits, len(payload.data), count) == (4, 1, 1)
        assert int(bundle.received(payload, count)) == int(_eager_labels(ctx, cfg, images[:1])[0])


@pytest.mark.slow  # prunes and fine-tunes (a few smoke steps, yet minutes on two busy cores)
@pytest.mark.parametrize(("method", "which"), [("three_step", 1), ("two_step_pruning", -1)])
def test_pruned_bundles_reproduce_the_variant(ctx: RunContext, tmp_path: Path, method: str, which: int) -> None:
    """Pruned variants (smoke budgets: a few fine-tuning steps): pruned channels removed, predictions kept."""
    cfg = METHODS.get(method).variants(ctx.profile.base_config(ctx.data.fingerprint), ["conv4_x"])[which]
    bundle = load_bundle(write_bundle(cfg, ctx, tmp_path / "b"))
    assert bundle.config() == cfg and bundle.quantizer["kind"] == "uniform"
    images = ctx.data.test_x[:16]
    assert torch.equal(bundle.predict(images), _eager_labels(ctx, cfg, images))
    if method == "two_step_pruning":  # step 2 cuts the channels sent
        unpruned = VariantConfig.make("original", "conv4_x", cfg.base, bits=8)
        full = load_bundle(write_bundle(unpruned, ctx, tmp_path / "o"))
        assert bundle.meta["symbols_per_image"] < full.meta["symbols_per_image"]


@pytest.mark.slow  # trains BottleNet++'s encoder for an epoch (about a minute on two busy cores)
def test_encoded_bundle_reproduces_bottlenet_pp(ctx: RunContext, tmp_path: Path) -> None:
    cfg = METHODS.get("bottlenet_pp").variants(ctx.profile.base_config(ctx.data.fingerprint), ["conv5_x"])[-1]
    bundle = load_bundle(write_bundle(cfg, ctx, tmp_path / "b"))
    assert bundle.coding == "entropy" and bundle.codec is not None and bundle.quantizer["symbols_per_image"] > 0
    images = ctx.data.test_x[:16]
    assert torch.equal(bundle.predict(images), _eager_labels(ctx, cfg, images))


def test_jscc_bundle_runs_over_its_simulated_channel(ctx: RunContext, tmp_path: Path) -> None:
    """A trained AWGN JSCC variant, exported and run: the device sends its 2k real channel inputs, the server passes
    them through the AWGN channel the bundle names (at the nominal SNR) before decoding. With an ideal channel the
    labels are the eager model's noiseless ones; with the named channel they come out of the noise."""
    from engine.coding.jscc import JsccConfig
    from engine.deploy.client import DeviceClient, live_session
    from engine.deploy.server import CoinferenceServer
    from engine.fig5 import fig5_variants

    base = ctx.profile.base_config(ctx.data.fingerprint)
    cfg = next(v for v in fig5_variants(base, "smoke", channels=("awgn",)) if dict(v.knobs)["jscc_channel"] == "awgn")
    jc = JsccConfig.from_knobs(cfg.knobs)
    bundle = load_bundle(write_bundle(cfg, ctx, tmp_path / "jscc"))
    assert bundle.coding == "analog" and bundle.meta["channel"]["name"] == "awgn"
    assert bundle.meta["channel"]["snr_db"] == jc.nominal
    images, labels = ctx.data.test_x[:12], ctx.data.test_y[:12].tolist()
    noisy = live_session(bundle, images, labels, rate_bps=8e6)
    assert [t.payload_bits for t in noisy.timings] == [32 * 2 * jc.uses] * len(images)  # float32, k complex uses
    with CoinferenceServer(bundle, channel=lambda x: x) as srv, DeviceClient(bundle, *srv.address, 8e6) as client:
        ideal = client.run(images, labels)
    assert [t.label for t in ideal.timings] == _eager_labels(ctx, cfg, images).tolist()  # deploy() has no channel
    assert noisy.accuracy is not None and 0.0 <= noisy.accuracy <= 1.0


def _tamper_zip(path: Path, member: str) -> None:
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    data = bytearray(files[member])
    data[len(data) // 2] ^= 0x01
    files[member] = bytes(data)
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in files.items():
            zf.writestr(n, b)


def test_tampered_bundles_are_detected(ctx: RunContext, tmp_path: Path) -> None:
    cfg = VariantConfig.make("original", "conv4_x", ctx.profile.base_config(ctx.data.fingerprint), bits=8)
    good = write_bundle(cfg, ctx, tmp_path / "good")
    for member in ("server.pt", "codec.json", "device.pt"):
        bad = shutil.copytree(good, tmp_path / f"bad-{member}")
        data = bytearray((bad / member).read_bytes())
        data[len(data) // 2] ^= 0x01
        (bad / member).write_bytes(bytes(data))
        with pytest.raises(UserError, match=f"{member} does not match its sha256"):
            load_bundle(bad)
    extra = shutil.copytree(good, tmp_path / "extra")
    (extra / "payload.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(UserError, match="unexpected file"):
        load_bundle(extra)
    missing = shutil.copytree(good, tmp_path / "missing")
    (missing / "device.pt").unlink()
    with pytest.raises(UserError, match="do not match the manifest"):
        load_bundle(missing)
    archive = write_bundle(cfg, ctx, tmp_path / "b.zip")
    _tamper_zip(archive, "server.pt")
    with pytest.raises(UserError, match="sha256"):
        load_bundle(archive)
    with pytest.raises(UserError, match="no bundle"):
        load_bundle(tmp_path / "nowhere")


def test_cli_export(fresh_cache: Path, tmp_cache: Path, ctx: RunContext, row: dict, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    (fresh_cache / "models").mkdir()
    for f in (tmp_cache / "models").glob("base-*"):  # the trained smoke base model: no retraining
        shutil.copy(f, fresh_cache / "models" / f.name)
    ResultsStore(fresh_cache / "results.sqlite").put(row)
    assert main(["export", "--id", row["id"][:8], "--out", str(tmp_path / "cli.zip"), "--test-images",
                 str(tmp_path / "test.npz"), "--images", "7"]) == 0
    assert row["id"] in capsys.readouterr().out
    bundle = load_bundle(tmp_path / "cli.zip")
    assert bundle.id == row["id"] and bundle.selection["metrics"]["accuracy"] == pytest.approx(row["accuracy"])
    with np.load(tmp_path / "test.npz") as npz:  # the bundle's own test images, first to last, as `device` takes them
        assert np.array_equal(npz["images"], ctx.data.test_x[:7].numpy()) and npz["labels"].tolist() == \
            ctx.data.test_y[:7].tolist()
    assert main(["export", "--id", "ffffffff", "--out", str(tmp_path / "x")]) == 2
    assert "see `python -m engine results`" in capsys.readouterr().err
    store = ResultsStore(fresh_cache / "results.sqlite")  # the device memory as deployed, kept in the row
    stamped = store.get(row["id"])["created_at"]
    assert main(["footprint", "--id", row["id"][:8], "--runtime", "onnx"]) == 0
    assert "onnx" in capsys.readouterr().out
    measured = store.get(row["id"])
    assert measured[MEMORY_FIGURES["onnx"]] > measured["device_memory_bytes"]
    assert measured["created_at"] == stamped and MEMORY_FIGURES["torchscript"] not in measured
    assert main(["footprint", "--base", row["base_id"], "--runtime", "onnx"]) == 0  # measured already: nothing to do
    assert capsys.readouterr().out.startswith("0 of 1 variant(s) to measure")
    store.put({**row, "id": "0" * 16, "split": "conv9_x"})  # a row that cannot be exported is skipped, in one line
    assert main(["footprint", "--base", row["base_id"], "--runtime", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "(0000000000000000): skipped, " in out and "1 variant(s) skipped" in out
    (tmp_path / "a-file").write_text("in the way")
    (tmp_path / "a-folder.zip").mkdir()
    for out in (tmp_path / "a-file" / "b.zip", tmp_path / "a-folder.zip"):  # under a file; a folder named .zip
        assert main(["export", "--id", row["id"][:8], "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"cannot write {out}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_where_nothing_may_train_a_missing_part_is_named_and_nothing_trains(ctx: RunContext, row: dict,
                                                                             tmp_path: Path) -> None:
    """The dashboard builds bundles with `may_train=False`: a part missing from the cache raises NotTrained naming
    it (the page queues the variant as a job) instead of training in the script run; cached parts still load."""
    from conftest import cache_sharing_data

    from engine.coding import NotTrained

    base = ctx.profile.base_config(ctx.data.fingerprint)
    empty = RunContext(ctx.data, ctx.profile, cache_sharing_data(tmp_path / "a", ctx.cache), may_train=False)
    with pytest.raises(NotTrained, match="the base model"):
        write_bundle(VariantConfig.make("original", "conv5_x", base, bits=8), empty, tmp_path / "o")
    assert not (empty.cache / "models").exists()

    trained = RunContext(ctx.data, ctx.profile, cache_sharing_data(tmp_path / "b", ctx.cache, ("data", "models")),
                         may_train=False)
    assert load_bundle(write_bundle(VariantConfig.make("original", "conv5_x", base, bits=8), trained,
                                    tmp_path / "b.zip")).id == row["id"]
    before = sorted(p.name for p in (trained.cache / "models").iterdir())
    pruned = VariantConfig.make("three_step", "conv5_x", base, encoder="none", snapshot=0, levels=1, target=0.25,
                                iteration_steps=1)
    with pytest.raises(NotTrained, match="pruning run at conv5_x"):
        write_bundle(pruned, trained, tmp_path / "p")
    coded = VariantConfig.make("three_step", "conv5_x", base, encoder="two_step", snapshot="none", enc_d=4)
    with pytest.raises(NotTrained, match="two_step encoder of three_step at conv5_x"):
        write_bundle(coded, trained, tmp_path / "e")
    assert sorted(p.name for p in (trained.cache / "models").iterdir()) == before
