"""Hostile datasets: damaged and lying tar archives (sizes, pax and long-name headers, sparse members, compression
bombs), images that claim huge dimensions or are not images, ImageFolders with FIFOs, devices, link loops and
sparse files, and CIFAR-10 batches that are crafted pickles (code, memo bombs, wrong types, labels outside the
classes). Each load is one UserError line, runs no code, writes nothing outside the cache and, whatever the input
claims, stays far below 1 GB of memory."""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import pickle
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from corpus import Sandbox, measure_peaks, one_line, png_bytes, sandbox_fixture, tiny_data_fixture  # noqa: F401
from corpus import write_image_folder as folder
from crafted import Payload
from PIL import Image

from engine.data import archive as archive_mod
from engine.data import load_data
from engine.errors import UserError

CLASSES = [f"c{i}" for i in range(10)]


# -- crafting archives --------------------------------------------------------------------------------------------


def tar_bytes(members: dict[str, bytes], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """An uncompressed tar of these regular files, in this order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def headers(raw: bytes) -> list[int]:
    """Offsets of the headers of an uncompressed tar (up to its end blocks)."""
    out, pos = [], 0
    while pos + 512 <= len(raw) and raw[pos:pos + 512].strip(b"\0"):
        out.append(pos)
        size = int(raw[pos + 124:pos + 136].strip(b"\0 ") or b"0", 8)
        pos += 512 + (size + 511) // 512 * 512
    return out


def patch(raw: bytes, index: int, **fields: bytes | int) -> bytes:
    """The tar with header `index` changed (size: a number; typeflag, realsize: raw bytes) and its checksum redone."""
    out = bytearray(raw)
    at = headers(raw)[index]
    for field, value in fields.items():
        if field == "size":
            octal = f"{value:011o}\0".encode()
            out[at + 124:at + 136] = octal if len(octal) == 12 else b"\x80" + value.to_bytes(11, "big")
        elif field == "typeflag":
            out[at + 156:at + 157] = value
        elif field == "realsize":
            out[at + 483:at + 495] = f"{value:011o}\0".encode()
    out[at + 148:at + 156] = b" " * 8
    out[at + 148:at + 156] = f"{sum(out[at:at + 512]):06o}\0 ".encode()
    return bytes(out)


def gz(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=1)


def zeros_gz(mib: int) -> bytes:
    """`mib` MiB of zeros as concatenated gzip members (a reader sees one stream): built at once, 1 kB per MiB."""
    return gzip.compress(bytes(1 << 20), compresslevel=9) * mib


def member_of_zeros(name: str, mib: int) -> bytes:
    """A .tar.gz whose first member is `mib` MiB of zeros, followed by a valid tiny ImageFolder."""
    raw = tar_bytes({name: b""})
    head = patch(raw[:512], 0, size=mib << 20)
    rest = tar_bytes({f"train/a/{i}.png": png_bytes(4, 4) for i in range(2)}
                     | {f"test/a/{i}.png": png_bytes(4, 4) for i in range(2)})
    return gz(head) + zeros_gz(mib) + gz(rest)


def images(n: int = 2, blob: Callable[[int], bytes] | None = None, first: bytes | None = None) -> dict[str, bytes]:
    """An ImageFolder's members: `n` 4x4 PNGs per split and class, the first one `first` if given."""
    make = blob or (lambda i: png_bytes(4, 4))
    out = {f"{s}/{c}/{i}.png": make(i) for s in ("train", "test") for c in ("a", "b") for i in range(n)}
    if first is not None:
        out["train/a/0.png"] = first
    return out


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says width x height (the CRC redone)."""
    data = bytearray(png_bytes(1, 1))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def big_folder(root: Path, n: int = 3) -> Path:
    """An ImageFolder of black 4000x4000 PNGs, `n` per split and class (50 kB each, 48 MB decoded)."""
    data = png_bytes(4000, 4000)
    for name in images(n):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def image_bytes(mode: str, size: tuple[int, int] = (4, 4), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return buf.getvalue()


# -- CIFAR-10 batches ----------------------------------------------------------------------------------------------


class _Call:
    """A pickle that calls `fn(*args)` when loaded."""

    def __init__(self, fn: object, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return self.fn, self.args


def batch(n: int = 2, **changes: object) -> bytes:
    doc = {"data": np.zeros((n, 3072), dtype=np.uint8), "labels": [0] * n, **changes}
    return pickle.dumps(doc, protocol=2)


def memo_bomb(refs: int) -> bytes:
    """A batch whose data is a list of `refs` references to one array row: 2 bytes each in the pickle, a list of
    pointers once unpickled, and refs x 3,072 bytes once numpy turned it into an array (the old reader did)."""
    row = pickle.dumps(np.zeros(3072, np.uint8), protocol=2)[2:-1]  # without PROTO and STOP
    body = b"(" + row + b"q\xff" + b"h\xff" * (refs - 1) + b"l"  # MARK row PUT(255) GET(255)... LIST
    return (b"\x80\x02}q\x00(X\x04\x00\x00\x00data" + body + b"X\x06\x00\x00\x00labels]u.")


def cifar_tar(**replace: bytes) -> bytes:
    """A CIFAR-10 python .tar.gz of 2-image batches; `replace` swaps files (by name) for other bytes."""
    files = {"batches.meta": pickle.dumps({"label_names": CLASSES}, protocol=2)}
    files |= {f"data_batch_{i}": batch() for i in range(1, 6)} | {"test_batch": batch()}
    files |= replace
    return gz(tar_bytes({f"cifar-10-batches-py/{k}": v for k, v in files.items() if v is not None}))


# -- the cases -----------------------------------------------------------------------------------------------------


def _file(name: str, data: bytes | Callable[[Sandbox], bytes]) -> Callable[[Sandbox], Path]:
    def make(box: Sandbox) -> Path:
        (box.inputs / name).write_bytes(data(box) if callable(data) else data)
        return box.inputs / name

    return make


def _folder(change: Callable[[Path, Sandbox], object], **kw: object) -> Callable[[Sandbox], Path]:
    def make(box: Sandbox) -> Path:
        root = folder(box.inputs / "ds", **kw)  # type: ignore[arg-type]
        change(root, box)
        return root

    return make


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def _cifar_root(replace: Callable[[Path], object]) -> Callable[[Sandbox], Path]:
    def make(box: Sandbox) -> Path:
        root = box.inputs / "cifar-10-batches-py"
        with tarfile.open(fileobj=io.BytesIO(cifar_tar())) as tf:
            tf.extractall(box.inputs, filter="data")
        replace(root)
        return root

    return make


def _symlink_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ("train/a/0.png", "test/a/0.png"):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
    return buf.getvalue()


def _loops(root: Path) -> None:
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for link in ("up", "again"):
                (root / split / cls / link).symlink_to("..")
    for png in (root / "test").rglob("*.png"):
        png.unlink()


def _claiming_array() -> bytes:
    """A batch whose data array's pickled state claims 1e9 rows of 3,072 values over 6 kB of bytes."""
    shape = b"K\x02M\x00\x0c\x86"  # BININT1 2, BININT2 3072, TUPLE2
    assert batch().count(shape) == 1
    return batch().replace(shape, b"J" + struct.pack("<i", 10**9) + b"M\x00\x0c\x86")


PAX_LONG = "train/a/" + "x" * 200 + ".png"
GOOD = tar_bytes(images())

CASES: dict[str, tuple[Callable[[Sandbox], Path], str]] = {
    # archives
    "gzip of garbage": (_file("d.tar.gz", b"\x1f\x8b" + b"not gzip" * 20), "not a readable tar archive"),
    "bzip2 of garbage": (_file("d.tar.bz2", b"BZh9" + b"\0" * 64), "not a readable tar archive"),
    "xz of garbage": (_file("d.tar.xz", b"\xfd7zXZ\x00" + b"\1" * 64), "not a readable tar archive"),
    "tar.gz cut in half": (_file("d.tar.gz", lambda b: gz(GOOD)[:len(gz(GOOD)) // 2]), "not a readable tar archive"),
    "tar cut inside a member": (_file("d.tar", GOOD[:512 + 40]), "not a readable tar archive"),
    "tar of zeros": (_file("d.tar", bytes(10240)), "no images under train and test"),
    "member claims 8 GiB": (_file("d.tar", patch(GOOD, 0, size=8 << 30)), "claims 8,589,934,592 bytes, over the"),
    "member claims 100 MiB, holds 20 bytes": (_file("d.tar", patch(GOOD, 0, size=100 << 20)), "over the 67,108,864"),
    "member claims less than it holds": (_file("d.tar", patch(GOOD, 0, size=7)), "cannot decode image"),
    "image member of 65 MiB of zeros": (_file("d.tar.gz", lambda b: member_of_zeros("train/a/z.png", 65)),
                                        "over the 67,108,864-byte limit of one file"),
    "pax header claims 1 GiB": (_file("d.tar", patch(tar_bytes({PAX_LONG: b"x"}, tarfile.PAX_FORMAT), 0,
                                                     size=1 << 30)), "a pax header of 1,073,741,824 bytes"),
    "long-name header claims 1 GiB": (_file("d.tar", patch(tar_bytes({PAX_LONG: b"x"}), 0, size=1 << 30)),
                                      "a long-name header of 1,073,741,824 bytes"),
    "sparse image member": (_file("d.tar", patch(GOOD, 0, typeflag=b"S", realsize=1 << 32)), "is a sparse file"),
    "images past the held limit": (_file("d.tar.gz", lambda b: b"".join(
        [gz(patch(tar_bytes({f"train/a/{i}.png": b""})[:512], 0, size=60 << 20)) + zeros_gz(60) for i in range(5)])),
        "the limits of a dataset"),
    "two train/test trees": (_file("d.tar", tar_bytes({f"{p}/{k}": v for p in "xy" for k, v in images().items()})),
                             "several train/test trees"),
    "traversal names only": (_file("d.tar", tar_bytes({f"../../{k}": v for k, v in images().items()})),
                             "no images under train and test"),
    "only a symlink to /etc/passwd": (_file("d.tar", lambda b: _symlink_tar()), "no images under train and test"),
    # images
    "png claims 60000x60000": (_file("d.tar", tar_bytes(images(first=png_claiming(60000, 60000)))),
                               "claims more than the 16,777,216 pixels"),
    "png claims 5000x5000": (_file("d.tar", tar_bytes(images(first=png_claiming(5000, 5000)))),
                             "claims more than the 16,777,216 pixels"),
    "12 images of 4000x4000": (lambda box: big_folder(box.inputs / "big"), "over the 536,870,912 of a dataset"),
    "truncated png": (_file("d.tar", tar_bytes(images(first=png_bytes(4, 4)[:30]))), "cannot decode image"),
    "text named .png": (_file("d.tar", tar_bytes(images(first=b"hello"))), "cannot decode image"),
    "pickle named .png": (_file("d.tar", lambda b: tar_bytes(images(first=pickle.dumps(Payload(b.marker))))),
                          "cannot decode image"),
    "32-bit float image": (_file("d.tar", tar_bytes(images(first=image_bytes("F", fmt="TIFF")))), "is not 8-bit"),
    "1-bit image": (_file("d.tar", tar_bytes(images(first=image_bytes("1")))), "is not 8-bit"),
    "sizes differ": (_file("d.tar", tar_bytes(images(blob=lambda i: png_bytes(4 + i, 4)))), "differ in size or mode"),
    "no test split": (_file("d.tar", tar_bytes({k: v for k, v in images().items() if k.startswith("train")})),
                      "no images under test"),
    "test class without training images": (_file("d.tar", tar_bytes(images() | {"test/zz/0.png": png_bytes(4, 4)})),
                                           "have no training images"),
    # ImageFolders on disk
    "a FIFO named .png": (_folder(lambda r, b: os.mkfifo(r / "train" / "a" / "fifo.png")), "not a regular file"),
    "a device named .png": (_folder(lambda r, b: (r / "train" / "a" / "zero.png").symlink_to("/dev/zero")),
                            "not a regular file"),
    "a sparse file of 100 MiB named .png": (_folder(lambda r, b: _sparse(r / "train" / "a" / "big.png", 100 << 20)),
                                            "over the 67,108,864-byte limit"),
    "link loops and no test images": (_folder(lambda r, b: _loops(r)), "no images under test"),
    # CIFAR-10 batches
    "meta runs os.system": (_file("c.tar.gz", lambda b: cifar_tar(**{"batches.meta": pickle.dumps(Payload(b.marker),
                                                                                                   protocol=2)})),
                            "batches.meta is not a CIFAR-10 batch"),
    "meta hides exec in a dict": (_file("c.tar.gz", lambda b: cifar_tar(**{"batches.meta": pickle.dumps(
        {"label_names": _Call(exec, f"open({str(b.marker)!r}, 'w')")})})), "batches.meta is not a CIFAR-10 batch"),
    "batch data runs os.system": (_file("c.tar.gz", lambda b: cifar_tar(
        data_batch_1=batch(data=Payload(b.marker)))), "data_batch_1 is not a CIFAR-10 batch"),
    "batch calls codecs rot13": (_file("c.tar.gz", cifar_tar(data_batch_1=pickle.dumps(
        _Call(codecs.encode, "x", "rot13"), protocol=2))), "data_batch_1 is not a CIFAR-10 batch"),
    "batch with a persistent id": (_file("c.tar.gz", cifar_tar(data_batch_2=b"\x80\x02P0\n.")),
                                   "persistent ids"),
    "batch data a memo bomb": (_file("c.tar.gz", cifar_tar(data_batch_1=memo_bomb(3_000_000))),
                               "data is not a uint8 array"),
    "batch data float64": (_file("c.tar.gz", cifar_tar(data_batch_1=batch(data=np.zeros((2, 3072))))),
                           "data is not a uint8 array"),
    "batch rows of 3000": (_file("c.tar.gz", cifar_tar(data_batch_1=batch(data=np.zeros((2, 3000), np.uint8)))),
                           "rows of 3,072 values"),
    "labels outside the classes": (_file("c.tar.gz", cifar_tar(test_batch=batch(labels=[0, 99]))),
                                   "labels outside the 10 classes"),
    "fewer labels than images": (_file("c.tar.gz", cifar_tar(data_batch_3=batch(labels=[1]))),
                                 "not as many labels"),
    "label_names one name": (_file("c.tar.gz", cifar_tar(**{"batches.meta": pickle.dumps({"label_names": ["x"]})})),
                             "label_names is not a list"),
    "array claims 1e9 rows": (_file("c.tar.gz", cifar_tar(data_batch_4=_claiming_array())), "unreadable CIFAR-10"),
    "test batch missing": (_file("c.tar.gz", cifar_tar(test_batch=None)), "lacks cifar-10-batches-py/test_batch"),
    "root with a FIFO batch": (_cifar_root(lambda r: (os.remove(r / "data_batch_2"), os.mkfifo(r / "data_batch_2"))),
                               "lacks data_batch_2"),
    "root with a batch of 100 MiB": (_cifar_root(lambda r: _sparse(r / "data_batch_3", 100 << 20)),
                                     "over the 67,108,864-byte limit"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_dataset_is_one_line(case: str, sandbox: Sandbox) -> None:
    make, message = CASES[case]
    path = make(sandbox)
    sandbox.freeze()
    with pytest.raises(UserError) as info:
        load_data(path, cache_dir=sandbox.cache)
    assert message in one_line(str(info.value))


def test_an_archive_that_expands_past_its_limit_stops(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """A junk member of zeros is skipped unread, but the stream stops at MAX_STREAM_BYTES (here lowered to 64 MiB:
    the memory test below runs the full 2 GiB)."""
    monkeypatch.setattr(archive_mod, "MAX_STREAM_BYTES", 64 << 20)
    (sandbox.inputs / "bomb.tar.gz").write_bytes(member_of_zeros("junk.bin", 100))
    sandbox.freeze()
    with pytest.raises(UserError, match="expands past 67,108,864 bytes"):
        load_data(sandbox.inputs / "bomb.tar.gz", cache_dir=sandbox.cache)


def test_more_files_than_a_dataset_may_hold_are_refused(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_mod, "MAX_IMAGES", 5)
    (sandbox.inputs / "d.tar").write_bytes(tar_bytes(images()))
    sandbox.freeze()
    with pytest.raises(UserError, match="holds more than 5 files"):
        load_data(sandbox.inputs / "d.tar", cache_dir=sandbox.cache)


def test_a_junk_member_is_skipped_unread(tmp_path: Path) -> None:
    """Streamed, not held: 100 MiB of zeros beside a valid ImageFolder loads."""
    (tmp_path / "d.tar.gz").write_bytes(member_of_zeros("junk.bin", 100))
    data = load_data(tmp_path / "d.tar.gz", cache_dir=tmp_path / "cache")
    assert data.train_x.shape == (2, 3, 4, 4) and data.classes == ["a"]


# -- peak memory -------------------------------------------------------------------------------------------------

_MEASURE = """
from engine.data import load_data
load_data(sys.argv[1], cache_dir=sys.argv[2] + "/warm")  # warm: PIL, tarfile and the decoder are set up
cases = json.loads(sys.argv[3])
print(json.dumps({case: peak(lambda p: load_data(p, cache_dir=sys.argv[2] + "/" + str(i)), path)
                  for i, (case, path) in enumerate(cases.items())}))
"""


def test_load_peak_memory_stays_far_below_1_gb_whatever_the_dataset_claims(tmp_path: Path) -> None:
    """Each of these once allocated what it claims (the old reader decompressed the whole archive and sized the
    decoded tensor from the first image): a 2.5 GiB compression bomb, a member claiming 8 GiB, an image claiming
    60000x60000, 12 images of 4000x4000 (576 MB decoded), a pickled batch that is 3 million references to one row
    (9 GB as an array), a sparse image file of 100 GiB on paper. A valid dataset beside them shows the measure."""
    cases = {"compression bomb of 2.5 GiB": member_of_zeros("junk.bin", 2560),
             "member claims 8 GiB": patch(GOOD, 0, size=8 << 30),
             "png claims 60000x60000": tar_bytes(images(first=png_claiming(60000, 60000))),
             "memo bomb": cifar_tar(data_batch_1=memo_bomb(3_000_000))}
    paths = {}
    for i, (case, raw) in enumerate(cases.items()):
        paths[case] = tmp_path / f"{i}.tar.gz"
        paths[case].write_bytes(raw)
    paths["12 images of 4000x4000"] = big_folder(tmp_path / "big")
    sparse = folder(tmp_path / "sparse")
    _sparse(sparse / "train" / "a" / "huge.png", 100 << 30)
    paths["sparse image of 100 GiB"] = sparse
    paths["valid: 4 images of 4000x4000"] = big_folder(tmp_path / "valid", n=1)
    peaks = measure_peaks(_MEASURE, [str(folder(tmp_path / "warm")), str(tmp_path / "caches"),
                                     json.dumps({k: str(v) for k, v in paths.items()})])
    assert {case for case, (_, outcome) in peaks.items() if outcome == "loaded"} == {"valid: 4 images of 4000x4000"}
    assert peaks["valid: 4 images of 4000x4000"][0] > 4 * 48_000_000  # the measure sees the decoded images
    assert max(peak for peak, _ in peaks.values()) < 1 << 30
