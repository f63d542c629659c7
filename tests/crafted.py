"""Crafted inputs shared by tests of several kinds: a pickle that creates a marker file when it is loaded, a
results row, and the files of a tiny valid bundle (two small random programs, no training) to alter."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.config import VariantConfig
from engine.deploy.selection import selection_document
from engine.entropy.huffman import HuffmanCodec
from engine.profiles import PROFILES


class Payload:
    """Creates `marker` when unpickled (`os.system("touch ...")`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def make_row(i: int, **extra: object) -> dict:
    """A plausible results row of variant number `i` (an `original` row at conv4_x), with `extra` columns."""
    return {"id": f"{i:016x}", "method": "original", "split": "conv4_x", "knobs": {"bits": 8},
            "accuracy": 0.5 + i / 100, "device_flops": 1e6 * i, "bits_actual": 100.0 + i, "feature_shape": [8, 4, 4],
            "width": 0.125, "seed": 0,
            "base_id": "b" * 16, "trained_on": "cpu, 2 threads", "code_version": "0.1.0", "train_seconds": 3.0,
            **extra}


class TinyDevice(nn.Module):
    """uint8 image -> 48 symbols in [0, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(torch.sigmoid(self.conv(x.float() / 255.0)) * 15).flatten(1).long()


class TinyServer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 10)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc(s.float() / 15.0)


def jit_bytes(program: nn.Module | torch.jit.ScriptModule, example: torch.Tensor | None = None) -> bytes:
    """A TorchScript archive of `program`: traced on `example`, or saved as it is (a scripted module)."""
    buf = io.BytesIO()
    torch.jit.save(program if example is None else torch.jit.trace(program.eval(), example), buf)
    return buf.getvalue()


def json_bytes(obj: object) -> bytes:
    return json.dumps(obj).encode()


def tiny_files() -> dict[str, bytes]:
    """The files of a valid entropy-coded bundle of two small random programs (no manifest)."""
    torch.manual_seed(0)
    image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    cfg = VariantConfig.make("original", "conv5_x", PROFILES.get("smoke").base_config("0" * 16), bits=8)
    codec = HuffmanCodec.fit(np.random.default_rng(0).integers(0, 16, (64, 48)), alphabet_size=16)
    meta = {"id": cfg.id, "method": "original", "split": "conv5_x", "coding": "entropy", "symbols_per_image": 48,
            "alphabet_size": 16, "sent_shape": [48], "sent_dtype": "int64", "input_shape": [3, 32, 32],
            "num_classes": 10, "classes": [str(i) for i in range(10)], "channel": None, "batch": 1}
    return {"device.pt": jit_bytes(TinyDevice(), image),
            "server.pt": jit_bytes(TinyServer(), torch.zeros(1, 48).long()),
            "codec.json": json_bytes(codec.state_dict()),
            "quantizer.json": json_bytes({"bits": 4, "lo": 0.0, "hi": 1.0}),
            "meta.json": json_bytes(meta), "selection.json": json_bytes(selection_document(cfg))}


def with_manifest(files: dict[str, bytes]) -> dict[str, bytes]:
    """`files` and a manifest that hashes them (as an attacker who rewrites a bundle would)."""
    try:
        meta = json.loads(files.get("meta.json", b""))
    except (ValueError, RecursionError):  # a hostile meta.json
        meta = None
    meta = meta if isinstance(meta, dict) else {}
    listed = {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()}
    return {**files, "manifest.json": json_bytes({"format": "coinfer-bundle", "version": 1, "id": meta.get("id"),
                                                  "files": listed})}


def write_dir(files: dict[str, bytes], out: Path, manifest: bool = True) -> Path:
    """A bundle directory of `files` (and, unless told otherwise, a manifest that hashes them)."""
    out.mkdir(parents=True)
    for name, data in (with_manifest(files) if manifest else files).items():
        (out / name).write_bytes(data)
    return out


def write_zip(files: dict[str, bytes], out: Path, manifest: bool = True) -> Path:
    """A bundle .zip of `files` (and, unless told otherwise, a manifest that hashes them)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (with_manifest(files) if manifest else files).items():
            zf.writestr(name, data)
    return out
