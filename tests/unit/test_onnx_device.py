"""The ONNX programs of a bundle: checked like every other file before use (hash, size, protobuf, self-contained),
run by onnxruntime to the TorchScript program's symbols, and a device runtime whose imports never reach torch."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from crafted import Payload, write_dir, write_zip

from bench.common import TinyDevice, TinyServer, tiny_bundle_files
from engine.deploy import bundle_files
from engine.deploy.bundle import ONNX_OPSET, load_bundle
from engine.deploy.export import _onnx_bytes
from engine.deploy.onnx_device import load_onnx_device, read_inputs
from engine.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTORCH = PROJECT_ROOT / "tests" / "notorch.py"


def onnx_files() -> dict[str, bytes]:
    """`tiny_bundle_files()` with both programs also as ONNX, exported from the traced programs as `write_bundle`
    does."""
    files = tiny_bundle_files()
    torch.manual_seed(0)
    device = torch.jit.trace(TinyDevice().eval(), torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    server = torch.jit.trace(TinyServer().eval(), torch.zeros(1, 48, dtype=torch.int64))
    files["device.pt"] = _jit(device)
    files["server.pt"] = _jit(server)
    files["device.onnx"] = _onnx_bytes(device, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ("image", "sent"))
    files["server.onnx"] = _onnx_bytes(server, torch.zeros(1, 48, dtype=torch.int64), ("received", "logits"))
    return files


def _jit(program: torch.jit.ScriptModule) -> bytes:
    import io

    buf = io.BytesIO()
    torch.jit.save(program, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return onnx_files()


def _refused(load, path: Path, match: str) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match=match) as info:
        load(path)
    assert "\n" not in str(info.value)


def test_onnx_device_sends_the_torchscript_symbols(files: dict[str, bytes], tmp_path: Path) -> None:
    path = write_zip(files, tmp_path / "b.zip")
    bundle, device = load_bundle(path), load_onnx_device(path, threads=1)
    images = np.random.default_rng(1).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    for image in images:
        sent = device.device_output(image)
        assert sent.dtype == np.int64
        assert np.array_equal(sent, bundle.device_output(torch.from_numpy(image)).numpy())
        assert device.encode(sent) == bundle.encode(torch.from_numpy(sent))
    assert device.program_seconds(images[:3]) > 0


def test_onnx_programs_are_checked_like_every_file(files: dict[str, bytes], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    pickled = pickle.dumps(Payload(marker))
    for load in (load_bundle, load_onnx_device):
        _refused(load, write_dir({**files, "device.onnx": pickled}, tmp_path / f"p{load.__name__}"),
                 "device.onnx is not an ONNX program")
    assert not marker.exists()
    # a model whose weights live in a file beside it (which a loader would read from the device's disk)
    for i, location in enumerate(("weights.bin", "/etc/passwd")):
        model = onnx.load_model_from_string(files["server.onnx"])
        weight = model.graph.initializer[0]
        weight.data_location = onnx.TensorProto.EXTERNAL
        weight.external_data.add(key="location", value=location)
        weight.ClearField("raw_data")
        _refused(load_bundle, write_dir({**files, "server.onnx": model.SerializeToString()}, tmp_path / f"e{i}"),
                 "server.onnx is not an ONNX program that stands alone .*external data files")
    # altered after export: the manifest's hash no longer matches
    out = write_dir(files, tmp_path / "altered")
    (out / "device.onnx").write_bytes(files["device.onnx"][:-1] + b"\0")
    _refused(load_onnx_device, out, "sha256")
    # a device program without its server program
    _refused(load_bundle, write_dir({k: v for k, v in files.items() if k != "server.onnx"}, tmp_path / "half"),
             "ONNX programs")


def test_oversized_onnx_is_refused_before_reading(files: dict[str, bytes], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_zip(files, tmp_path / "b.zip")
    monkeypatch.setitem(bundle_files.FILE_LIMITS, "device.onnx", len(files["device.onnx"]) - 1)
    _refused(load_onnx_device, path, "device.onnx has .* over its")


def test_a_bundle_without_onnx_loads_but_has_no_onnx_device(tmp_path: Path) -> None:
    path = write_dir(tiny_bundle_files(), tmp_path / "old")
    assert load_bundle(path).device is not None
    _refused(load_onnx_device, path, "no ONNX device part")


def test_meta_of_export_names_the_opset(files: dict[str, bytes]) -> None:
    model = onnx.load_model_from_string(files["device.onnx"])
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [ONNX_OPSET]
    assert ONNX_OPSET == 17


def test_inputs_file_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((4, 3, 32, 32), np.uint8), labels=np.arange(4))
    images, labels = read_inputs(good, [3, 32, 32])
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 1, 2, 3]
    cases = {"floats": {"images": np.zeros((4, 3, 32, 32), np.float32)},
             "shape": {"images": np.zeros((4, 3, 16, 16), np.uint8)},
             "labels": {"images": np.zeros((4, 3, 32, 32), np.uint8), "labels": np.arange(3)},
             "objects": {"images": np.array([{"a": 1}], dtype=object)},
             "none": {"labels": np.arange(4)}}
    for name, arrays in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(UserError) as info:
            read_inputs(tmp_path / f"{name}.npz", [3, 32, 32])
        assert "\n" not in str(info.value), name
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not an --inputs"):
        read_inputs(tmp_path / "junk.npz", [3, 32, 32])


def test_device_runtime_imports_no_torch(files: dict[str, bytes], tmp_path: Path) -> None:
    """The ONNX device's whole import chain, and loading and running a bundle, in a process where torch fails."""
    path = write_zip(files, tmp_path / "b.zip")
    code = ("import numpy as np\nfrom engine.deploy.onnx_device import load_onnx_device\n"
            "import engine.deploy.client, engine.deploy.link, engine.deploy.protocol, engine.entropy, engine.cli\n"
            f"d = load_onnx_device({str(path)!r}, threads=1)\n"
            "print(d.encode(d.device_output(np.zeros((3, 32, 32), np.uint8)))[1])\n")
    done = subprocess.run([sys.executable, str(NOTORCH), "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "48"
    # and the guard works: engine.coding does import torch
    guarded = subprocess.run([sys.executable, str(NOTORCH), "-c", "import engine.coding"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(PROJECT_ROOT)})
    assert guarded.returncode == 3 and "torch was imported" in guarded.stderr

