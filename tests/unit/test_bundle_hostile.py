"""Hostile bundles: damaged zips, programs that are pickles, deep or non-finite JSON, shapes that would blow up
memory, members past the size limits, a sent_shape the programs do not send. Each is one UserError line, nothing
is unpickled, and loading stays far below 1 GB whatever the bundle claims. Tiny random programs, no training."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.config import VariantConfig
from engine.deploy.bundle import MAX_BUNDLE_BYTES, load_bundle
from engine.deploy.selection import MAX_SELECTION_BYTES, selection_document
from engine.entropy.huffman import HuffmanCodec
from engine.errors import UserError
from engine.profiles import PROFILES

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class _Device(nn.Module):
    """uint8 image -> 48 symbols in [0, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(torch.sigmoid(self.conv(x.float() / 255.0)) * 15).flatten(1).long()


class _Server(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 10)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc(s.float() / 15.0)


class _Payload:
    """Runs `touch marker` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _jit_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(module.eval(), example), buf)
    return buf.getvalue()


def _json(obj: object) -> bytes:
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
    return {"device.pt": _jit_bytes(_Device(), image), "server.pt": _jit_bytes(_Server(), torch.zeros(1, 48).long()),
            "codec.json": _json(codec.state_dict()), "quantizer.json": _json({"bits": 4, "lo": 0.0, "hi": 1.0}),
            "meta.json": _json(meta), "selection.json": _json(selection_document(cfg))}


def with_manifest(files: dict[str, bytes]) -> dict[str, bytes]:
    """`files` and a manifest that hashes them (as an attacker who rewrites a bundle would)."""
    meta = json.loads(files["meta.json"]) if files["meta.json"].lstrip()[:1] == b"{" else {}
    listed = {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()}
    return {**files, "manifest.json": _json({"format": "coinfer-bundle", "version": 1, "id": meta.get("id"),
                                              "files": listed})}


def write_dir(files: dict[str, bytes], out: Path) -> Path:
    out.mkdir(parents=True)
    for name, data in with_manifest(files).items():
        (out / name).write_bytes(data)
    return out


def write_zip(files: dict[str, bytes], out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in with_manifest(files).items():
            zf.writestr(name, data)
    return out


def _refused(path: Path, match: str) -> str:
    with pytest.raises(UserError, match=match) as info:
        load_bundle(path)
    assert "\n" not in str(info.value) and "export" in str(info.value)
    return str(info.value)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return tiny_files()


def test_the_tiny_bundle_loads_from_a_directory_and_a_zip(files: dict[str, bytes], tmp_path: Path) -> None:
    image = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    labels = [load_bundle(write(files, tmp_path / name)).predict(image).tolist()
              for write, name in ((write_dir, "b"), (write_zip, "b.zip"))]
    assert labels[0] == labels[1] and len(labels[0]) == 2


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _damaged(good: bytes, how: str) -> bytes:
    """A zip with a wrong CRC, a local header that names another file, or a central directory that lies about a
    member's size."""
    central = good.index(b"PK\x01\x02")
    if how == "crc":
        return _patch(good, central + 16, "<I", struct.unpack_from("<I", good, central + 16)[0] ^ 1)
    if how == "local name":
        return good[:30] + bytes([good[30] ^ 1]) + good[31:]
    return _patch(good, central + 24, "<I", struct.unpack_from("<I", good, central + 24)[0] - 7)


@pytest.mark.parametrize("how", ["crc", "local name", "size"])
def test_damaged_zips_are_one_line(files: dict[str, bytes], tmp_path: Path, how: str) -> None:
    good = write_zip(files, tmp_path / "good.zip").read_bytes()
    bad = tmp_path / "bad.zip"
    bad.write_bytes(_damaged(good, how))
    _refused(bad, "damaged zip archive")


@pytest.mark.parametrize("member", ["device.pt", "server.pt"])
@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_programs_that_are_pickles_are_refused_unread(files: dict[str, bytes], tmp_path: Path, member: str,
                                                      kind: str) -> None:
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    if kind == "pickle":
        buf.write(pickle.dumps({"model": _Payload(marker)}))
    else:
        torch.save({"model": _Payload(marker), "w": torch.zeros(3)}, buf)
    bundle = write_zip({**files, member: buf.getvalue()}, tmp_path / "b.zip")
    _refused(bundle, f"{member} is not a TorchScript program")
    assert not marker.exists()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(("member", "content", "match"), [
    ("meta.json", _nested(100_000), "meta.json is nested too deeply"),
    ("codec.json", _nested(100_000), "codec.json is nested too deeply"),
    ("manifest.json", b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "manifest.json is nested too deeply"),
    ("quantizer.json", b'{"levels": [0.0, NaN, 1.0]}', "quantizer.json holds NaN"),
    ("quantizer.json", b'{"lo": -1e999}', "quantizer.json holds -1e999"),
    ("quantizer.json", b"[1, 2]", "quantizer.json is not a table"),
    ("codec.json", b'{"codec": "huffman", "counts": [1], "code_lengths": "x", "codes": null}', "not a codec table"),
])
def test_hostile_tables_are_one_line(files: dict[str, bytes], tmp_path: Path, member: str, content: bytes,
                                     match: str) -> None:
    rewritten = {**files, member: content} if member != "manifest.json" else files
    bundle = write_dir(rewritten, tmp_path / "b")
    if member == "manifest.json":
        (bundle / member).write_bytes(content)
    _refused(bundle, match)


def _meta(files: dict[str, bytes], **changes: object) -> dict[str, bytes]:
    return {**files, "meta.json": _json({**json.loads(files["meta.json"]), **changes})}


@pytest.mark.parametrize(("changes", "match"), [
    ({"input_shape": [3, 65536, 65536]}, r"input_shape \[3, 65536, 65536\] holds 12,884,901,888 values, over"),
    ({"input_shape": [3, 4096, 4096]}, "over the 4,194,304 a bundle may have"),
    ({"sent_shape": [48, 65536, 64]}, "sent_shape .* holds 201,326,592 values"),
    ({"sent_shape": [49]}, r"sent_shape \[49\] does not hold its 48 symbols"),
    ({"sent_shape": [6, 8]}, r"device program sends shape \[48\], meta.json's sent_shape is \[6, 8\]"),
    ({"num_classes": 7}, r"server program gives shape \[1, 10\], not \[1, 7\]"),
    ({"input_shape": [1, 32, 32]}, "programs do not run as meta.json describes"),
    ({"input_shape": "3x32x32"}, "does not describe the programs' shapes"),
])
def test_meta_that_does_not_fit_the_programs_is_refused_at_load(files: dict[str, bytes], tmp_path: Path,
                                                                changes: dict, match: str) -> None:
    _refused(write_dir(_meta(files, **changes), tmp_path / "b"), match)


def _zeros_member(zf: zipfile.ZipFile, name: str, size: int) -> None:
    with zf.open(name, "w", force_zip64=True) as f:
        chunk = bytes(1 << 24)
        for start in range(0, size, len(chunk)):
            f.write(chunk[:min(len(chunk), size - start)])


def big_member_zips(files: dict[str, bytes], out: Path) -> dict[str, Path]:
    """Zips whose members would each be read whole before: meta.json one byte over its limit, and device.pt just
    under MAX_BUNDLE_BYTES (its own limit) beside the other files (together over it). Zeros, deflated: small."""
    out.mkdir(exist_ok=True)
    paths = {}
    for case, member, size in (("meta over its limit", "meta.json", MAX_SELECTION_BYTES + 1),
                               ("files together over the limit", "device.pt", MAX_BUNDLE_BYTES - 1)):
        paths[case] = out / f"{member}.zip"
        with zipfile.ZipFile(paths[case], "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, data in with_manifest(files).items():
                if name == member:
                    _zeros_member(zf, name, size)
                else:
                    zf.writestr(name, data)
    return paths


def test_members_past_the_size_limits_are_refused_unread(files: dict[str, bytes], tmp_path: Path) -> None:
    paths = big_member_zips(files, tmp_path)
    _refused(paths["meta over its limit"], "meta.json has 1,048,577 bytes, over its 1,048,576-byte limit")
    _refused(paths["files together over the limit"], "its files hold .* bytes, over the 268,435,456-byte limit")
    bundle = write_dir(files, tmp_path / "dir")
    with open(bundle / "codec.json", "ab") as f:
        f.truncate(5 << 20)  # sparse: 5 MiB on paper
    _refused(bundle, "codec.json has 5,242,880 bytes, over its 4,194,304-byte limit")


_MEASURE = """
import json, resource, sys
from engine.errors import UserError
from engine.deploy.bundle import load_bundle
load_bundle(sys.argv[1])  # warm: torch's loaders and the JIT are set up
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
peaks = {}
for case, path in json.loads(sys.argv[2]).items():
    try:
        load_bundle(path)
        peaks[case] = "loaded"
    except UserError as exc:
        assert "\\n" not in str(exc)
        peaks[case] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
print(json.dumps(peaks))
"""


def test_load_peak_memory_stays_small_whatever_the_bundle_claims(files: dict[str, bytes], tmp_path: Path) -> None:
    cases = {k: str(v) for k, v in big_member_zips(files, tmp_path / "big").items()}
    for name, changes in (("huge input_shape", {"input_shape": [3, 65536, 65536]}),
                          ("huge sent_shape", {"sent_shape": [65536, 65536, 3]})):
        cases[name] = str(write_zip(_meta(files, **changes), tmp_path / f"{name}.zip"))
    cases["deep meta.json"] = str(write_zip({**files, "meta.json": _nested(MAX_SELECTION_BYTES // 2)},
                                            tmp_path / "deep.zip"))
    cases["4 MiB codec.json of empty objects"] = str(write_zip(
        {**files, "codec.json": b"[" + b"{}," * ((4 << 20) // 3 - 1) + b"{}]"}, tmp_path / "wide.zip"))
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(write_zip(files, tmp_path / "good.zip")),
                          json.dumps(cases)], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    peaks = json.loads(run.stdout.strip().splitlines()[-1])
    print({case: f"{peak / 1e6:.0f} MB" for case, peak in peaks.items()})
    assert set(peaks) == set(cases) and all(isinstance(p, int) for p in peaks.values())
    assert max(peaks.values()) < 1 << 30
