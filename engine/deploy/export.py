"""Writing a deployable bundle: the variant's device part (uint8 image [1, C, H, W] -> what it sends) and server
part (what arrives -> logits [1, classes]) traced to TorchScript at batch 1 (one image per message, as co-inference
runs them) and exported from those programs to ONNX (opset ONNX_OPSET, for a device without torch), the codec and
quantiser tables, meta and selection as plain JSON, and a manifest of every file's size and sha256; a directory, or
a .zip when the target ends in .zip, replaced atomically."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.config import VariantConfig
from engine.data import normalize
from engine.deploy.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, CODINGS, ONNX_OPSET, json_bytes, sha256_hex
from engine.deploy.selection import finite_json, selection_document
from engine.errors import UserError
from engine.profiles import recipe_of

# ------------------------------------------------------------------------------------------------------ bundles


class _Normalised(nn.Module):
    """A deployed part fed the uint8 image: normalised as in training, then `inner`."""

    def __init__(self, inner: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(normalize(x, self.mean, self.std))


def _trace(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module.eval(), example, check_trace=False)

def _jit_bytes(program: torch.jit.ScriptModule) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(program, buf)
    return buf.getvalue()

def _onnx_bytes(program: torch.jit.ScriptModule, example: torch.Tensor, names: tuple[str, str]) -> bytes:
    """A traced program as an ONNX model at batch 1 (the TorchScript-based exporter, opset ONNX_OPSET).

    Args:
        program: the traced device or server program.
        example: its input at batch 1.
        names: the names of the model's input and output.

    Returns:
        The serialised ONNX model.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(program, (example,), buf, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[names[0]], output_names=[names[1]])
    return buf.getvalue()


def bundle_files(cfg: VariantConfig, ctx: Any, metrics: Mapping[str, Any] | None = None,
                 environment: Any = None) -> dict[str, bytes]:
    """The files of a variant's bundle, in memory (see the module docstring)."""
    from engine.methods import METHODS

    method = METHODS.get(cfg.method)
    if not hasattr(method, "deploy"):
        raise UserError(f"method {cfg.method!r} cannot be exported: it has no deploy hook")
    deployed = method.deploy(cfg, ctx)
    data = ctx.data
    if deployed.coding not in CODINGS:
        raise ValueError(f"unknown coding {deployed.coding!r}")
    image = data.test_x[:1].clone()
    mean, std = data.mean, data.std
    files: dict[str, bytes] = {}
    if deployed.coding == "png":
        server = _trace(_Normalised(deployed.server, mean, std), image)
        sent_example = None
    else:
        device = _trace(_Normalised(deployed.device, mean, std), image)
        files["device.pt"] = _jit_bytes(device)
        files["device.onnx"] = _onnx_bytes(device, image, ("image", "sent"))
        with torch.no_grad():
            sent_example = device(image)
        server = _trace(deployed.server, sent_example)
    files["server.pt"] = _jit_bytes(server)
    files["server.onnx"] = _onnx_bytes(server, image if sent_example is None else sent_example, ("received", "logits"))
    files["codec.json"] = json_bytes(deployed.codec.state_dict() if deployed.codec is not None else {})
    files["quantizer.json"] = json_bytes(finite_json(deployed.quantizer, "quantizer"))
    profile = recipe_of(cfg.base)
    meta = {
        "id": cfg.id,
        "method": cfg.method,
        "split": cfg.split,
        "coding": deployed.coding,
        "symbols_per_image": int(deployed.symbols_per_image or (sent_example[0].numel() if sent_example is not None
                                                                else 0)),
        "alphabet_size": int(deployed.alphabet_size),
        "sent_shape": list(sent_example.shape[1:]) if sent_example is not None else [],
        "sent_dtype": str(sent_example.dtype).removeprefix("torch.") if sent_example is not None else "uint8",
        "input_shape": [data.channels, *data.image_size],
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "dataset": data.fingerprint,
        "profile": profile,
        "channel": deployed.channel,
        "batch": 1,
        "onnx_opset": ONNX_OPSET,
    }
    files["meta.json"] = json_bytes(meta)
    files["selection.json"] = json_bytes(selection_document(cfg, metrics, environment))
    return files


def write_bundle(cfg: VariantConfig, ctx: Any, out: Path, metrics: Mapping[str, Any] | None = None,
                 environment: Any = None) -> Path:
    """Build the variant's deployed parts from the cached models (no retraining when cached) and write its bundle to
    `out`: a directory, or a zip archive when `out` ends in .zip. Written atomically; an existing bundle is
    replaced. `metrics` (e.g. its results row) and `environment` go into selection.json."""
    out = Path(out)
    files = bundle_files(cfg, ctx, metrics, environment)
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "id": cfg.id,
                "files": {name: {"bytes": len(b), "sha256": sha256_hex(b)} for name, b in sorted(files.items())}}
    files["manifest.json"] = json_bytes(manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if out.suffix == ".zip":
            target = tmp / "bundle.zip"
            with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, b in files.items():
                    zf.writestr(name, b)
        else:
            target = tmp / "bundle"
            target.mkdir()
            for name, b in files.items():
                (target / name).write_bytes(b)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists() and target.is_dir():
            out.unlink()
        os.replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_test_images(data: Any, n: int, out: Path) -> int:
    """Write the first `n` test images and labels of `data` as a .npz (`images` uint8 [N, C, H, W], `labels`), what
    `python -m engine device --inputs` reads on a device without torch (or without the dataset).

    Args:
        data: the variant's dataset (an ImageData, cut as its profile cuts it).
        n: how many images, at most.
        out: the .npz file, written atomically.

    Returns:
        The number of images written.
    """
    import numpy as np

    from engine.files import atomic_write

    n = min(n, len(data.test_y))
    buf = io.BytesIO()
    np.savez(buf, images=data.test_x[:n].numpy(), labels=data.test_y[:n].numpy().astype(np.int64))
    atomic_write(Path(out), lambda tmp: tmp.write_bytes(buf.getvalue()))
    return n
