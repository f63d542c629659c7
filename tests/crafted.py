"""Crafted inputs shared by tests of several kinds: a pickle that creates a marker file when it is loaded, a
results row, and bundles written from altered files (the tiny bundle's files are `bench.common.tiny_bundle_files`)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from bench.common import with_manifest


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


def json_bytes(obj: object) -> bytes:
    return json.dumps(obj).encode()


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
