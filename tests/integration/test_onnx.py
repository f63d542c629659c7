"""ONNX device and server parts of real variants (smoke profile): the symbols onnxruntime sends against the
TorchScript program's, and `python -m engine device --runtime onnx` without torch against a normal `serve`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.config import VariantConfig
from engine.data import ImageData
from engine.deploy.bundle import ONNX_OPSET, load_bundle
from engine.deploy.export import write_bundle, write_test_images
from engine.deploy.onnx_device import load_onnx_device
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
    return METHODS.get("bottlenet_pp").variants(base, ["conv5_x"])[-1]


@pytest.mark.parametrize("which", ["original", "bottlenet_pp"])
def test_onnx_device_sends_the_torchscript_symbols(ctx: RunContext, tmp_path: Path, which: str) -> None:
    """Same symbols on 200 test images. The 8-bit quantiser rounds a float feature: where onnxruntime sums a
    convolution in another order, a value on a rounding boundary may land one level over (1 in 400,000 here); the
    learned encoder's codeword indices match exactly."""
    path = write_bundle(_variant(ctx, which), ctx, tmp_path / "b")
    bundle, device = load_bundle(path), load_onnx_device(path, threads=1)
    assert bundle.meta["onnx_opset"] == ONNX_OPSET
    differ, total = 0, 0
    for image in ctx.data.test_x[:200]:
        ts = bundle.device_output(image).numpy()
        ox = device.device_output(image.numpy())
        assert ox.shape == ts.shape and ox.dtype == ts.dtype
        differ += int((ox != ts).sum())
        total += ts.size
        assert np.abs(ox - ts).max() <= 1
        if np.array_equal(ox, ts):
            assert device.encode(ox) == bundle.encode(torch.from_numpy(ts))
    assert differ <= (total // 10_000 if which == "original" else 0), (differ, total)
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
    env = {**os.environ, "COINFER_CACHE": str(fresh_cache), "PYTHONPATH": str(PROJECT_ROOT)}
    serve = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--bundle", str(out), "--port", "0",
                              "--threads", "1"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        line = serve.stdout.readline()
        assert "serving original @ conv4_x" in line, line
        address = line.split(" on ")[1].split(";")[0]
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
    finally:
        serve.terminate()
        serve.wait(timeout=10)
