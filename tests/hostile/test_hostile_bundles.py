"""Hostile bundles: damaged and lying zips, programs that are pickles, torch.save archives or TorchScript that
reaches files (at load, or when it runs), manifests that lie or are missing, deep or non-finite JSON, shapes and
members that would blow up memory, folders holding FIFOs and devices, and a device's --inputs .npz that lies about
its arrays. Each load is one UserError line that says to export the bundle again, nothing is unpickled or run
(no marker file appears), nothing is written outside the cache, and whatever a bundle claims, loading it stays far
below 1 GB. Tiny random programs, no training."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import Sandbox, measure_peaks, one_line, sandbox_fixture, tiny_data_fixture  # noqa: F401 - fixtures
from crafted import Payload, json_bytes, write_dir, write_zip
from torch import nn

from bench.common import TinyDevice, jit_bytes, tiny_bundle_files, with_manifest
from engine.deploy.bundle import MAX_BUNDLE_BYTES, load_bundle
from engine.deploy.onnx_device import read_inputs
from engine.deploy.selection import MAX_SELECTION_BYTES
from engine.errors import UserError

Build = Callable[[dict[str, bytes], Sandbox], Path]


# -- programs that reach outside the process ------------------------------------------------------------------------


class _WritesAFile(nn.Module):
    """A device program that maps `path` as shared memory (creating the file) and writes into it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path, self.inner = path, TinyDevice()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, shared=True, size=8, dtype=torch.uint8)
        t.fill_(1)
        return self.inner(x) + t[0].long() * 0


class _SavesAFile(nn.Module):
    """A server program that calls torch.save on its input."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path, self.fc = path, nn.Linear(48, 10)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        torch.save(s, self.path)
        return self.fc(s.float())


class _RunsAtLoad(nn.Module):
    """A device program whose __setstate__ (run by torch.jit.load) creates `path`."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path, self.inner = path, TinyDevice()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return self.path, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        t = torch.from_file(state[0], shared=True, size=8, dtype=torch.uint8)
        t.fill_(1)
        self.path, self.training = state


def _scripted(module: type[nn.Module], member: str) -> Build:
    return lambda files, box: write_zip({**files, member: jit_bytes(torch.jit.script(module(str(box.marker))))},
                                        box.inputs / "b.zip")


def _pickled(member: str, kind: str) -> Build:
    def build(files: dict[str, bytes], box: Sandbox) -> Path:
        buf = io.BytesIO()
        if kind == "pickle":
            buf.write(pickle.dumps({"model": Payload(box.marker)}))
        else:
            torch.save({"model": Payload(box.marker), "w": torch.zeros(3)}, buf)
        return write_zip({**files, member: buf.getvalue()}, box.inputs / "b.zip")

    return build


def _program_claiming(size: int) -> Build:
    """device.pt a TorchScript zip whose directory claims a member of `size` bytes (re-hashed by the manifest)."""
    def build(files: dict[str, bytes], box: Sandbox) -> Path:
        data = bytearray(files["device.pt"])
        central = data.index(b"PK\x01\x02")
        struct.pack_into("<I", data, central + 24, size)
        return write_zip({**files, "device.pt": bytes(data)}, box.inputs / "b.zip")

    return build


# -- damaged zips, lying manifests, odd files ----------------------------------------------------------------------


def _damaged(how: str) -> Build:
    """A zip with a wrong CRC, a local header that names another file, or a central directory that lies about a
    member's size."""
    def build(files: dict[str, bytes], box: Sandbox) -> Path:
        good = bytearray(write_zip(files, box.inputs / "good.zip").read_bytes())
        (box.inputs / "good.zip").unlink()
        central = good.index(b"PK\x01\x02")
        if how == "crc":
            good[central + 16] ^= 1
        elif how == "local name":
            good[30] ^= 1
        else:
            struct.pack_into("<I", good, central + 24, struct.unpack_from("<I", good, central + 24)[0] - 7)
        (box.inputs / "b.zip").write_bytes(bytes(good))
        return box.inputs / "b.zip"

    return build


def _dir(change: Callable[[dict[str, bytes]], dict[str, bytes]] = lambda f: f, manifest: bool = True,
         after: Callable[[Path], object] | None = None) -> Build:
    """A bundle folder of the changed files (re-hashed unless `manifest` is False), then `after` applied to it."""
    def build(files: dict[str, bytes], box: Sandbox) -> Path:
        path = write_dir(change(dict(files)), box.inputs / "b", manifest)
        if after is not None:
            after(path)
        return path

    return build


def _zip(change: Callable[[dict[str, bytes]], dict[str, bytes]]) -> Build:
    return lambda files, box: write_zip(change(dict(files)), box.inputs / "b.zip")


def _meta(**changes: object) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    return lambda f: {**f, "meta.json": json_bytes({**json.loads(f["meta.json"]), **changes})}


def _codec(**changes: object) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    return lambda f: {**f, "codec.json": json_bytes({**json.loads(f["codec.json"]), **changes})}


def _raw(member: str, content: bytes) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    return lambda f: {**f, member: content}


def _manifest(doc: dict) -> Callable[[Path], None]:
    return lambda path: (path / "manifest.json").write_bytes(json_bytes(doc))


def _twice(files: dict[str, bytes], box: Sandbox) -> Path:
    with zipfile.ZipFile(box.inputs / "b.zip", "w") as zf:
        for name, data in with_manifest(files).items():
            zf.writestr(name, data)
        zf.writestr("meta.json", files["meta.json"])
    return box.inputs / "b.zip"


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _sparse(name: str, size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with open(path / name, "ab") as f:
            f.truncate(size)  # on paper only

    return make


def _text(files: dict[str, bytes], box: Sandbox) -> Path:
    (box.inputs / "b.zip").write_text("not a bundle")
    return box.inputs / "b.zip"


def _fifo_in(name: str) -> Callable[[Path], None]:
    return lambda path: (os.remove(path / name), os.mkfifo(path / name))


def _device_file_as(name: str) -> Callable[[Path], None]:
    return lambda path: (os.remove(path / name), (path / name).symlink_to("/dev/zero"))


CASES: dict[str, tuple[Build, str]] = {
    # zips
    "zip with a bad CRC": (_damaged("crc"), "damaged zip archive"),
    "zip whose local header names another file": (_damaged("local name"), "damaged zip archive"),
    "zip whose directory lies about a size": (_damaged("size"), "damaged zip archive"),
    "a text file named .zip": (_text, "neither a bundle directory nor a bundle .zip"),
    "a member twice": (_twice, "a member appears twice"),
    # programs
    "device.pt a pickle": (_pickled("device.pt", "pickle"), "device.pt is not a TorchScript program"),
    "server.pt a pickle": (_pickled("server.pt", "pickle"), "server.pt is not a TorchScript program"),
    "device.pt a torch.save archive": (_pickled("device.pt", "torch.save"), "device.pt is not a TorchScript program"),
    "server.pt a torch.save archive": (_pickled("server.pt", "torch.save"), "server.pt is not a TorchScript program"),
    "device.pt maps a file and writes it": (_scripted(_WritesAFile, "device.pt"), "device.pt calls aten::from_file"),
    "server.pt saves to a file": (_scripted(_SavesAFile, "server.pt"), "server.pt calls aten::save"),
    "device.pt runs code when loaded": (_scripted(_RunsAtLoad, "device.pt"), "its code defines __setstate__"),
    "device.pt claims a member of 4 GiB": (_program_claiming(0xFFFF_FFF0), "damaged zip archive|of a sensible size"),
    "device.pt random bytes": (_zip(_raw("device.pt", os.urandom(4096))), "device.pt is not a TorchScript program"),
    "device.onnx a pickle": (_dir(lambda f: {**f, "device.onnx": pickle.dumps(Payload(Path("pwned")))}),
                             "its ONNX programs"),
    # manifests
    "no manifest": (_dir(manifest=False), "has no manifest.json"),
    "manifest of another format": (_dir(after=_manifest({"format": "zip-of-pickles", "version": 1, "files": {}})),
                                   "not a coinfer-bundle version 1 manifest"),
    "manifest version 2": (_dir(after=_manifest({"format": "coinfer-bundle", "version": 2, "files": {}})),
                           "not a coinfer-bundle version 1 manifest"),
    "manifest lists other files": (_dir(after=_manifest({"format": "coinfer-bundle", "version": 1,
                                                         "files": {"evil.py": {}}})), "do not match the manifest's"),
    "a file altered after hashing": (_dir(after=lambda p: (p / "codec.json").write_bytes(b"{}")),
                                     "does not match its sha256"),
    "an unknown file": (_dir(lambda f: {**f, "evil.py": b"import os"}), r"unexpected file\(s\) evil.py"),
    "server.pt missing": (_dir(lambda f: {k: v for k, v in f.items() if k != "server.pt"}), "lacks server.pt"),
    "files name different variants": (_dir(_meta(id="0" * 16)), "its files name different variants"),
    "unknown coding": (_dir(_meta(coding="pickle")), "unknown coding 'pickle'"),
    "png coding with a device program": (_dir(_meta(coding="png")), "unknown coding 'png' or a missing device"),
    "selection a pickle": (_dir(lambda f: {**f, "selection.json": pickle.dumps(Payload(Path("pwned")))}),
                           "invalid selection file"),
    "selection with bits 99": (_dir(lambda f: {**f, "selection.json": f["selection.json"].replace(b'"bits": 8',
                                                                                                  b'"bits": 99')}),
                               "invalid selection file"),
    # tables
    "meta.json nested 100,000 deep": (_dir(_raw("meta.json", _nested(100_000))), "meta.json is nested too deeply"),
    "codec.json nested 100,000 deep": (_dir(_raw("codec.json", _nested(100_000))), "codec.json is nested too deeply"),
    "manifest.json nested 50,000 deep": (_dir(after=lambda p: (p / "manifest.json").write_bytes(
        b'{"a": ' * 50_000 + b"1" + b"}" * 50_000)), "manifest.json is nested too deeply"),
    "quantizer.json with NaN": (_dir(_raw("quantizer.json", b'{"levels": [0.0, NaN, 1.0]}')),
                                "quantizer.json holds NaN"),
    "quantizer.json with -1e999": (_dir(_raw("quantizer.json", b'{"lo": -1e999}')), "quantizer.json holds -1e999"),
    "quantizer.json a list": (_dir(_raw("quantizer.json", b"[1, 2]")), "quantizer.json is not a table"),
    "codec.json of the wrong types": (_dir(_raw("codec.json", b'{"codec": "huffman", "counts": [1], '
                                                              b'"code_lengths": "x", "codes": null}')),
                                      "not a codec table"),
    "codec.json of an unknown codec": (_dir(_codec(codec="os.system")), "not a codec table"),
    "meta.json with a 5000-digit number": (_dir(_raw("meta.json", b'{"id": ' + b"9" * 5000 + b"}")),
                                           "meta.json is not valid JSON"),
    # shapes
    "input_shape 3x65536x65536": (_dir(_meta(input_shape=[3, 65536, 65536])),
                                  r"input_shape \[3, 65536, 65536\] holds 12,884,901,888 values, over"),
    "input_shape 3x4096x4096": (_dir(_meta(input_shape=[3, 4096, 4096])), "over the 4,194,304 a bundle may have"),
    "sent_shape of 201 million": (_dir(_meta(sent_shape=[48, 65536, 64])), "sent_shape .* holds 201,326,592 values"),
    "sent_shape not the symbols": (_dir(_meta(sent_shape=[49])), r"sent_shape \[49\] does not hold its 48 symbols"),
    "sent_shape the programs do not send": (_dir(_meta(sent_shape=[6, 8])),
                                            r"device program sends shape \[48\], meta.json's sent_shape is \[6, 8\]"),
    "num_classes the programs do not give": (_dir(_meta(num_classes=7)),
                                             r"server program gives shape \[1, 10\], not \[1, 7\]"),
    "input_shape the programs do not take": (_dir(_meta(input_shape=[1, 32, 32])),
                                             "programs do not run as meta.json describes"),
    "input_shape text": (_dir(_meta(input_shape="3x32x32")), "does not describe the programs' shapes"),
    "input_shape negative": (_dir(_meta(input_shape=[3, -32, 32])), "does not describe the programs' shapes"),
    "num_classes a million": (_dir(_meta(num_classes=1_000_000)), "does not describe the programs' shapes"),
    "symbols_per_image true": (_dir(_meta(symbols_per_image=True)), "does not describe the programs' shapes"),
    # sizes and odd files
    "codec.json of 5 MiB on paper": (_dir(after=_sparse("codec.json", 5 << 20)),
                                     "codec.json has 5,242,880 bytes, over its 4,194,304-byte limit"),
    "server.pt of 4 GiB on paper": (_dir(after=_sparse("server.pt", 4 << 30)), "over its 268,435,456-byte limit"),
    "meta.json a FIFO": (_dir(after=_fifo_in("meta.json")), "meta.json is not a regular file"),
    "codec.json /dev/zero": (_dir(after=_device_file_as("codec.json")), "codec.json is not a regular file"),
}


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return tiny_bundle_files()


def test_the_tiny_bundle_loads_from_a_directory_and_a_zip(files: dict[str, bytes], tmp_path: Path) -> None:
    image = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    labels = [load_bundle(write(files, tmp_path / name)).predict(image).tolist()
              for write, name in ((write_dir, "b"), (write_zip, "b.zip"))]
    assert labels[0] == labels[1] and len(labels[0]) == 2


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_bundle_is_one_line(case: str, files: dict[str, bytes], sandbox: Sandbox) -> None:
    build, match = CASES[case]
    path = build(files, sandbox)
    sandbox.freeze()
    with pytest.raises(UserError) as info:
        load_bundle(path)
    line = one_line(str(info.value))
    assert re.search(match, line) and re.search("export|write one", line), line


# -- a device's --inputs -------------------------------------------------------------------------------------------


def _npz(**arrays: np.ndarray) -> Callable[[Sandbox], Path]:
    def make(box: Sandbox) -> Path:
        np.savez_compressed(box.inputs / "inputs.npz", **arrays)
        return box.inputs / "inputs.npz"

    return make


def _npz_of_objects(box: Sandbox) -> Path:
    images = np.empty(1, dtype=object)
    images[0] = Payload(box.marker)
    np.savez(box.inputs / "inputs.npz", images=images)
    return box.inputs / "inputs.npz"


def _npy(shape: tuple[int, ...], data: bytes) -> bytes:
    """An .npy of uint8 whose header says `shape`, followed by `data`."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return header.getvalue() + data


def _npz_claiming(box: Sandbox) -> Path:
    """images.npy whose header claims a million images over the bytes of 2."""
    with zipfile.ZipFile(box.inputs / "inputs.npz", "w") as zf:
        zf.writestr("images.npy", _npy((1_000_000, 3, 32, 32), bytes(2 * 3072)))
    return box.inputs / "inputs.npz"


def _npz_directory_claiming(box: Sandbox) -> Path:
    """A valid .npz whose zip directory says its images hold 600 MB."""
    path = _npz(images=np.zeros((2, 3, 32, 32), np.uint8))(box)
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 600_000_000)
    path.write_bytes(bytes(data))
    return path


def _not_a_zip(box: Sandbox) -> Path:
    (box.inputs / "inputs.npz").write_bytes(pickle.dumps(Payload(box.marker)))
    return box.inputs / "inputs.npz"


INPUTS: dict[str, tuple[Callable[[Sandbox], Path], str]] = {
    "images an object array that unpickles code": (_npz_of_objects, "not an --inputs .npz"),
    "a pickle named .npz": (_not_a_zip, "not an --inputs .npz"),
    "header claims a million images over 2": (_npz_claiming, "not an --inputs .npz"),
    "directory claims 600 MB": (_npz_directory_claiming, "expand past 536,870,912 bytes"),
    "no images array": (_npz(labels=np.zeros(2, np.int64)), "not an --inputs .npz"),
    "float images": (_npz(images=np.zeros((2, 3, 32, 32))), "images must be uint8 [N, 3, 32, 32]"),
    "images of another shape": (_npz(images=np.zeros((2, 1, 28, 28), np.uint8)), "images must be uint8"),
    "labels of another length": (_npz(images=np.zeros((2, 3, 32, 32), np.uint8), labels=np.zeros(5, np.int64)),
                                 "labels must be 2 integers"),
}


@pytest.mark.parametrize("case", list(INPUTS))
def test_hostile_device_inputs_are_one_line(case: str, sandbox: Sandbox) -> None:
    make, message = INPUTS[case]
    path = make(sandbox)
    sandbox.freeze()
    with pytest.raises(UserError) as info:
        read_inputs(path, [3, 32, 32])
    assert message in one_line(str(info.value))


# -- peak memory ---------------------------------------------------------------------------------------------------


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
    for case, message in (("meta over its limit", "meta.json has 1,048,577 bytes, over its 1,048,576-byte limit"),
                          ("files together over the limit", "its files hold .* bytes, over the 268,435,456-byte")):
        with pytest.raises(UserError) as info:
            load_bundle(paths[case])
        assert re.search(message, one_line(str(info.value)))


_MEASURE = """
from engine.deploy.bundle import load_bundle
load_bundle(sys.argv[1])  # warm: torch's loaders and the JIT are set up
print(json.dumps({case: peak(load_bundle, path) for case, path in json.loads(sys.argv[2]).items()}))
"""


def test_load_peak_memory_stays_small_whatever_the_bundle_claims(files: dict[str, bytes], tmp_path: Path) -> None:
    cases = {k: str(v) for k, v in big_member_zips(files, tmp_path / "big").items()}
    for name, changes in (("huge input_shape", {"input_shape": [3, 65536, 65536]}),
                          ("huge sent_shape", {"sent_shape": [65536, 65536, 3]})):
        cases[name] = str(write_zip(_meta(**changes)(files), tmp_path / f"{name}.zip"))
    cases["deep meta.json"] = str(write_zip({**files, "meta.json": _nested(MAX_SELECTION_BYTES // 2)},
                                            tmp_path / "deep.zip"))
    cases["4 MiB codec.json of empty objects"] = str(write_zip(
        {**files, "codec.json": b"[" + b"{}," * ((4 << 20) // 3 - 1) + b"{}]"}, tmp_path / "wide.zip"))
    cases["valid"] = str(write_zip(files, tmp_path / "valid.zip"))
    peaks = measure_peaks(_MEASURE, [str(write_zip(files, tmp_path / "good.zip")), json.dumps(cases)])
    assert {case for case, (_, outcome) in peaks.items() if outcome == "loaded"} == {"valid"}
    assert max(peak for peak, _ in peaks.values()) < 1 << 30
