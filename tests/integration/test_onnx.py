"""ONNX device and server parts of real variants (smoke profile): the symbols onnxruntime sends against the
TorchScript program's (the `original` baseline, BottleNet++, a physically pruned `three_step` snapshot and an AWGN
JSCC encoder), and `python -m engine device --runtime onnx` without torch against a normal `serve`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import served

from engine.config import VariantConfig
from engine.data import ImageData
from engine.deploy.bundle import ONNX_OPSET, load_bundle
from engine.deploy.export import write_bundle, write_test_images
from engine.deploy.onnx_device import load_onnx_device
from engine.fig5 import fig5_variants
from engine.methods import METHODS, RunContext
from engine.profiles import PROFILES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTORCH = PROJECT_ROOT / "tests" / "notorch.py"


@pytest.fixture(scope="module")
def ctx(small_data: ImageData, tmp_cache: Path) -> RunContext:
    return RunContext(small_data, PROFILES.get("smoke"), tmp_cache)


def _variant(ctx: RunContext, which: str) -> VariantConfig:
    base = ctx.profile.base_config(ctx.data.fingerprint)
    if which == "original":
        return VariantConfig.make("original", "conv4_x", base, bits=8)
    if which == "three_step":  # the last pruning level's snapshot, 8-bit + Huffman, pruned channels removed
        return [v for v in METHODS.get("three_step").variants(base, ["conv4_x"]) if v.knob("encoder") == "none"][-1]
    if which == "two_step":  # the paper's encoder with learned scalar codewords (a nearest-codeword search)
        return VariantConfig.make("three_step", "conv5_x", base, **ctx.profile.encoding_knobs(), encoder="two_step",
                                  snapshot="none", enc_d=8, enc_bits=2)
    if which == "jscc":  # an AWGN JSCC encoder: the device sends real-valued channel inputs
        return next(v for v in fig5_variants(base, "smoke", channels=("awgn",)) if v.knob("jscc_channel") == "awgn")
    return METHODS.get("bottlenet_pp").variants(base, ["conv5_x"])[-1]


# The most symbols of all images that may differ: the 8-bit quantiser rounds a float feature, and where onnxruntime
# sums a convolution in another order, a value on a rounding boundary may land one level over (1 in 400,000 on the
# smoke model); a learned encoder's codeword indices match exactly.
DIFFERING = {"original": 1e-4, "three_step": 1e-4, "bottlenet_pp": 0.0, "two_step": 0.0}


@pytest.mark.parametrize("which", ["original", "bottlenet_pp", "two_step", "three_step", "jscc"])
def test_onnx_device_sends_the_torchscript_symbols(ctx: RunContext, tmp_path: Path, which: str) -> None:
    """Same symbols on 200 test images (see DIFFERING); JSCC's real-valued channel inputs within float32 rounding;
    the same payload wherever the symbols match."""
    cfg = _variant(ctx, which)
    path = write_bundle(cfg, ctx, tmp_path / "b")
    bundle, device = load_bundle(path), load_onnx_device(path, threads=1)
    assert bundle.meta["onnx_opset"] == ONNX_OPSET
    if which == "three_step":  # physically pruned: fewer channels cross the link than the unpruned split's
        unpruned = load_bundle(write_bundle(_variant(ctx, "original"), ctx, tmp_path / "unpruned"))
        assert bundle.meta["sent_shape"][0] < unpruned.meta["sent_shape"][0]
    differ, total = 0, 0
    for image in ctx.data.test_x[:200]:
        ts = bundle.device_output(image).numpy()
        ox = device.device_output(image.numpy())
        assert ox.shape == ts.shape and ox.dtype == ts.dtype
        total += ts.size
        if bundle.coding == "analog":
            np.testing.assert_allclose(ox, ts, rtol=1e-4, atol=1e-5)
            assert device.encode(ox)[0].bits == bundle.encode(torch.from_numpy(ts))[0].bits == 32 * ts.size
            continue
        differ += int((ox != ts).sum())
        assert np.abs(ox - ts).max() <= 1
        if np.array_equal(ox, ts):
            assert device.encode(ox) == bundle.encode(torch.from_numpy(ts))
    assert bundle.coding == ("analog" if which == "jscc" else "entropy")
    assert differ <= total * DIFFERING.get(which, 0.0), (differ, total)
    # the server part as ONNX gives the TorchScript logits
    server = ort.InferenceSession((path / "server.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    received = bundle.received(*bundle.encode(bundle.device_output(ctx.data.test_x[0])))
    logits = server.run(None, {"received": received.numpy()})[0]
    np.testing.assert_allclose(logits, bundle.logits(received).numpy(), rtol=1e-4, atol=1e-4)


def test_device_without_torch_against_serve(fresh_cache: Path, ctx: RunContext, tmp_path: Path) -> None:
    """`device --runtime onnx --inputs` in a process where importing torch fails, against `serve`."""
    out = write_bundle(_variant(ctx, "original"), ctx, tmp_path / "bundle.zip")
    inputs = tmp_path / "test.npz"
    assert write_test_images(ctx.data, 12, inputs) == 12
    with served(out, fresh_cache, "original @ conv4_x") as (address, env):
        device = [sys.executable, str(NOTORCH), "-m", "engine", "device", "--bundle", str(out), "--server", address,
                  "--runtime", "onnx", "--rate", "100kB/s", "--threads", "1"]
        run = subprocess.run([*device, "--inputs", str(inputs), "--images", "20"], cwd=PROJECT_ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert ", onnx): 12 images over 100 kB/s" in run.stdout
        assert "accuracy" in run.stdout and "bytes on the wire" in run.stdout
        # 3: the reading of --data tried to import torch (tests/notorch.py), after the one-line error of status 2
        for bad, says, status in ((["--inputs", str(tmp_path / "none.npz")], "no --inputs file", 2),
                                  (["--inputs", str(out)], "not an --inputs", 2), ([], "needs torch", 3)):
            refused = subprocess.run([*device, *bad], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                                     timeout=120)
            assert refused.returncode == status and says in refused.stderr, refused.stderr
            assert "Traceback" not in refused.stderr


def test_tiny_payloads_travel_as_the_row_reports(ctx: RunContext, tmp_path: Path) -> None:
    """BottleNet++ at ratio 256 sends 16 eight-bit symbols: ANS spends more than their 16 fixed-length bytes on some
    images, which then travel fixed-length. Through `serve`, from the TorchScript and the ONNX device alike, every
    test image's payload is the shorter form, their mean is the row's `bits_actual`, the labels its accuracy."""
    from engine.deploy.client import DeviceClient
    from engine.deploy.server import CoinferenceServer
    from engine.entropy import fixed_bits

    base = ctx.profile.base_config(ctx.data.fingerprint)
    cfg = next(v for v in METHODS.get("bottlenet_pp").variants(base, ["conv4_x"]) if dict(v.knobs)["ratio"] == 256)
    row = METHODS.get("bottlenet_pp").run(cfg, ctx)
    path = write_bundle(cfg, ctx, tmp_path / "tiny")
    bundle, onnx = load_bundle(path), load_onnx_device(path, threads=1)
    assert bundle.meta["symbols_per_image"] == 16 and bundle.codec.alphabet_size == 256
    size = fixed_bits(16, 256)
    images, labels = ctx.data.test_x, ctx.data.test_y.tolist()
    streams = [int(bundle.codec.bits_per_image(bundle.device_output(im).numpy().reshape(1, -1))[0]) for im in images]
    assert max(streams) > size  # some images are cheaper fixed-length
    with CoinferenceServer(bundle) as server:
        for device, inputs in ((bundle, images), (onnx, images.numpy())):
            with DeviceClient(device, *server.address, rate_bps=float("inf")) as client:
                report = client.run(inputs, labels)
            sizes = [t.payload_bits for t in report.timings]
            assert sizes == [min(n, size) for n in streams]
            assert np.mean(sizes) == pytest.approx(row["bits_actual"], abs=1e-9)
            assert report.accuracy == pytest.approx(row["accuracy"])
        assert server.stats.rejected == 0 and server.stats.images == 2 * len(labels)
