"""What the benchmark scripts (and some tests) share: the default data location, a profile's data and base model
config, and a tiny synthetic bundle (two small random programs, no training) for sessions that need no model."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.config import BaseModelConfig, VariantConfig
from engine.data import ImageData, load_data, subset
from engine.deploy.selection import selection_document
from engine.entropy.huffman import HuffmanCodec
from engine.profiles import PROFILES, Profile

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def profile_data(profile_name: str, data_path: str | Path,
                 model: str = "resnet18") -> tuple[Profile, ImageData, BaseModelConfig]:
    """The profile, its dataset (cut to the profile's limits, seed 0, as the sweep does) and its base config for
    `model` (a model reference)."""
    profile = PROFILES.get(profile_name)
    data = subset(load_data(data_path), profile.train_limit, profile.test_limit, seed=0)
    return profile, data, profile.base_config(data.fingerprint, model=model)


class TinyDevice(nn.Module):
    """uint8 image [3, 32, 32] -> 48 symbols in [0, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(torch.sigmoid(self.conv(x.float() / 255.0)) * 15).flatten(1).long()


class TinyServer(nn.Module):
    """48 symbols -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 10)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc(s.float() / 15.0)


def jit_bytes(program: nn.Module, example: torch.Tensor | None = None) -> bytes:
    """A TorchScript archive of `program`: traced on `example`, or saved as it is (a scripted module)."""
    buf = io.BytesIO()
    torch.jit.save(program if example is None else torch.jit.trace(program.eval(), example), buf)
    return buf.getvalue()


def tiny_bundle_files() -> dict[str, bytes]:
    """The files (no manifest) of a valid entropy-coded bundle of TinyDevice and TinyServer, seeded."""
    torch.manual_seed(0)
    cfg = VariantConfig.make("original", "conv5_x", PROFILES.get("smoke").base_config("0" * 16), bits=8)
    codec = HuffmanCodec.fit(np.random.default_rng(0).integers(0, 16, (64, 48)), alphabet_size=16)
    meta = {"id": cfg.id, "method": "original", "split": "conv5_x", "coding": "entropy", "symbols_per_image": 48,
            "alphabet_size": 16, "sent_shape": [48], "sent_dtype": "int64", "input_shape": [3, 32, 32],
            "num_classes": 10, "classes": [str(i) for i in range(10)], "channel": None, "batch": 1}
    return {"device.pt": jit_bytes(TinyDevice(), torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
            "server.pt": jit_bytes(TinyServer(), torch.zeros(1, 48, dtype=torch.int64)),
            "codec.json": json.dumps(codec.state_dict()).encode(),
            "quantizer.json": json.dumps({"bits": 4, "lo": 0.0, "hi": 1.0}).encode(),
            "meta.json": json.dumps(meta).encode(), "selection.json": json.dumps(selection_document(cfg)).encode()}


def with_manifest(files: dict[str, bytes]) -> dict[str, bytes]:
    """`files` and a manifest that hashes them (its id from meta.json when that is a JSON object)."""
    try:
        meta = json.loads(files.get("meta.json", b""))
    except (ValueError, RecursionError):  # a test's hostile meta.json
        meta = None
    listed = {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()}
    ident = meta.get("id") if isinstance(meta, dict) else None
    return {**files, "manifest.json": json.dumps({"format": "coinfer-bundle", "version": 1, "id": ident,
                                                  "files": listed}).encode()}


def tiny_bundle(out: Path) -> Path:
    """The tiny bundle written as a folder at `out` (what `python -m engine serve --bundle` and `device` read)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, data in with_manifest(tiny_bundle_files()).items():
        (out / name).write_bytes(data)
    return out
