"""Datasets as uint8 tensors. Sources, in order: an explicit path (--data) or $COINFER_DATA; what is under
`<cache>/data/`; torchvision's CIFAR-10 download. A source is a torchvision CIFAR-10 root, an ImageFolder directory
with train/ and test/, or a tar archive of either. Images are decoded once with PIL (in parallel, straight from the
archive's bytes) and cached under `<cache>/data/` keyed by the source's content hash. Also here: seeded subsets and
validation splits, batched augmentation and normalisation, and the PNG size of the input images."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import logging
import lzma
import math
import mmap
import multiprocessing
import os
import pickle
import socket
import sys
import tarfile
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.errors import CorruptCacheError, DataNotFoundError, UserError
from engine.files import atomic_write
from engine.paths import PROJECT_ROOT
from engine.paths import cache_dir as default_cache_dir

log = logging.getLogger(__name__)

CACHE_VERSION = 1
SPLITS = ("train", "test")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)
CIFAR_META = "batches.meta"
CIFAR_URL_HOST = "www.cs.toronto.edu"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
LAYOUTS = "a CIFAR-10 root, an ImageFolder dir with train/ and test/, or a .tar/.tar.gz of one"
PNG_SETTINGS = "PIL PNG, optimize=False, compress_level=6 (default)"
DOWNLOAD_TIMEOUT_S = 10.0
_PARALLEL_MIN_IMAGES = 2048
_DECODE_LOCK = threading.Lock()  # one decode at a time per process: forked workers read the module-level job


# --------------------------------------------------------------------------------------------- the dataset


@dataclass(frozen=True, eq=False)
class ImageData:
    """A decoded dataset: uint8 images (N, C, H, W) and int64 labels. Treat the tensors as read-only."""

    name: str
    classes: list[str]
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    fingerprint: str = ""  # content hash of the source, plus a suffix when subset
    source: str = ""  # human description

    def __post_init__(self) -> None:
        for x, y in ((self.train_x, self.train_y), (self.test_x, self.test_y)):
            if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.int64 or y.shape != (len(x),):
                raise ValueError("ImageData wants uint8 images (N, C, H, W) and int64 labels (N,)")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError("train and test images differ in shape")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    @cached_property
    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact per-channel mean and std of train_x in [0, 1] units, from 256-bin histograms."""
        levels = torch.arange(256, dtype=torch.float64) / 255.0
        mean, std = [], []
        for c in range(self.channels):
            hist = torch.bincount(self.train_x[:, c].reshape(-1), minlength=256).to(torch.float64)
            n = max(float(hist.sum()), 1.0)
            m = float((hist * levels).sum()) / n
            var = float((hist * (levels - m) ** 2).sum()) / n
            mean.append(m)
            std.append(max(math.sqrt(var), 1e-3))
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean of train_x in [0, 1] units, float32 (C,)."""
        return self._moments[0]

    @property
    def std(self) -> torch.Tensor:
        """Per-channel standard deviation of train_x in [0, 1] units, float32 (C,)."""
        return self._moments[1]


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    kind: str  # "cifar" (a cifar-10-batches-py folder), "folder" (ImageFolder) or "tar"
    path: Path

    @property
    def name(self) -> str:
        if self.kind == "cifar":
            return "cifar10"
        if self.kind == "tar":
            low = self.path.name.lower()
            suffix = next((s for s in sorted(TAR_SUFFIXES, key=len, reverse=True) if low.endswith(s)), "")
            return self.path.name[: len(self.path.name) - len(suffix)] or self.path.name
        return self.path.name

    def fingerprint(self) -> str:
        """First 16 hex digits of a SHA-256: of the file (tar), of the batch files (CIFAR root), or of the relative
        paths, sizes and mtimes of the images (ImageFolder)."""
        h = hashlib.sha256()
        if self.kind == "tar":
            _hash_file(self.path, h)
        elif self.kind == "cifar":
            for fname in (*CIFAR_TRAIN, *CIFAR_TEST, CIFAR_META):
                _hash_file(self.path / fname, h)
        else:
            h.update(b"imagefolder\n")
            for split, rel, file in _list_folder(self.path):
                st = file.stat()
                h.update(f"{split}/{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:16]


def _hash_file(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)


def _is_tar_name(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def _resolve(path: Path, origin: str) -> _Source:
    """The source at `path`; UserError when missing or not a recognised layout."""
    if not path.exists():
        raise UserError(f"{origin}: {path} does not exist; expected {LAYOUTS}")
    if path.is_file():
        if _is_tar_name(path) or tarfile.is_tarfile(path):
            return _Source("tar", path)
        raise UserError(f"{origin}: {path} is not a tar archive; expected {LAYOUTS}")
    if (path / CIFAR_DIR).is_dir():
        path = path / CIFAR_DIR
    if (path / "data_batch_1").is_file() or path.name == CIFAR_DIR:
        missing = [f for f in (*CIFAR_TRAIN, *CIFAR_TEST, CIFAR_META) if not (path / f).is_file()]
        if missing:
            raise UserError(f"{origin}: CIFAR-10 root {path} lacks {', '.join(missing)}; download it again")
        return _Source("cifar", path)
    if (path / "train").is_dir() and (path / "test").is_dir():
        return _Source("folder", path)
    raise UserError(f"{origin}: {path} is not a recognised dataset; expected {LAYOUTS}")


def _list_folder(root: Path) -> list[tuple[str, str, Path]]:
    """(split, "<class>/<file>", path) of every image under root/train/<class>/ and root/test/<class>/, sorted."""
    out = []
    for split in SPLITS:
        base = root / split
        for cls in sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith(".")):
            for dirpath, dirnames, files in os.walk(base / cls, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel_dir = Path(dirpath).relative_to(base).as_posix()
                for fname in sorted(files):
                    if not fname.startswith(".") and fname.lower().endswith(IMG_EXTENSIONS):
                        out.append((split, f"{rel_dir}/{fname}", Path(dirpath) / fname))
    return out


# --------------------------------------------------------------------------------------------- decoding


@dataclass
class _Decoded:
    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    layout: str


_Blob = bytes | memoryview | Path
_JOB: tuple[Sequence[_Blob], Sequence[str], np.ndarray, tuple[int, ...], str, tuple | None] | None = None
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_header(data: bytes | memoryview) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG's start-of-frame marker; None when not a JPEG or not found."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker in _SOF_MARKERS:
            if i + 10 > n:
                return None
            return (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8], data[i + 9]
        elif marker == 0xDA:  # image data before any frame header
            return None
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def _open_image(blob: _Blob, name: str) -> tuple[np.ndarray, str]:
    """One image as an (H, W, C) uint8 array and its mode (L, LA, RGB or RGBA)."""
    try:
        data = blob.read_bytes() if isinstance(blob, Path) else blob
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                if im.mode == "1" or im.mode.startswith("I") or im.mode == "F":
                    raise UserError(f"{name}: image mode {im.mode} is not 8-bit; convert the images to L or RGB")
                im = im.convert("RGBA" if im.mode == "P" and "transparency" in im.info else "RGB")
            im.load()
            mode, shape = im.mode, (im.height, im.width, len(im.getbands()))
            arr = np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(shape)  # faster than np.asarray(im)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise UserError(f"cannot decode image {name}: {str(exc).splitlines()[0][:120]}") from None
    return arr, mode


def _describe(shape: tuple[int, ...], mode: str) -> str:
    return f"{shape[1]}x{shape[0]} {mode}"


def _decode_range(lo: int, hi: int) -> str | None:
    """Decode images lo..hi of the current job into its output array; an error message, or None."""
    assert _JOB is not None
    blobs, names, out, shape, mode, jpeg = _JOB
    try:
        for i in range(lo, hi):
            blob = blobs[i].read_bytes() if isinstance(blobs[i], Path) else blobs[i]
            if jpeg is not None and _jpeg_header(blob) == jpeg:  # same frame as the first: skip PIL's header parser
                try:
                    im = Image.frombytes(mode, (shape[1], shape[0]), blob, "jpeg", mode, "")
                    out[i] = np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(shape).transpose(2, 0, 1)
                    continue
                except (OSError, ValueError):
                    pass  # the general path below reports it
            arr, m = _open_image(blob, names[i])
            if arr.shape != shape or m != mode:
                return (f"images differ in size or mode: {names[i]} is {_describe(arr.shape, m)} but {names[0]} is "
                        f"{_describe(shape, mode)}; all images of a dataset must share one size and mode")
            out[i] = arr.transpose(2, 0, 1)
    except UserError as exc:
        return str(exc)
    return None


def _worker_count(n: int) -> int:
    if n < _PARALLEL_MIN_IMAGES or sys.platform != "linux" or multiprocessing.current_process().daemon:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8, n // 1024))


def _decode_images(blobs: Sequence[_Blob], names: Sequence[str]) -> torch.Tensor:
    """Decode encoded images (bytes, or files) into one uint8 (N, C, H, W) tensor with PIL. Forked workers share the
    output buffer on Linux; a mismatch in size or mode raises UserError. JPEGs whose frame header matches the
    first image's go straight to PIL's JPEG decoder (Image.frombytes), skipping Image.open's header parsing."""
    with _DECODE_LOCK:
        return _decode_images_locked(blobs, names)


def _decode_images_locked(blobs: Sequence[_Blob], names: Sequence[str]) -> torch.Tensor:
    global _JOB
    first, mode = _open_image(blobs[0], names[0])
    shape = first.shape
    n = len(blobs)
    workers = _worker_count(n)
    nbytes = n * int(np.prod(shape))
    buf: mmap.mmap | bytearray = mmap.mmap(-1, max(nbytes, 1)) if workers > 1 else bytearray(nbytes)
    out = np.frombuffer(buf, dtype=np.uint8, count=nbytes).reshape(n, shape[2], shape[0], shape[1])
    bounds = np.linspace(0, n, workers + 1).astype(int)
    first_blob = blobs[0].read_bytes() if isinstance(blobs[0], Path) else blobs[0]
    jpeg = _jpeg_header(first_blob)  # JPEGs with this frame header and mode decode about twice as fast
    if jpeg is None or {1: "L", 3: "RGB"}.get(jpeg[2]) != mode or jpeg[:2] != shape[:2]:
        jpeg = None
    _JOB = (blobs, names, out, shape, mode, jpeg)
    errors: list[str | None] = []
    procs = []
    try:
        if workers > 1:
            ctx = multiprocessing.get_context("fork")
            for lo, hi in zip(bounds[1:-1], bounds[2:], strict=True):
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_decode_worker, args=(int(lo), int(hi), send), daemon=True)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                    proc.start()
                send.close()
                procs.append((proc, recv))
        errors.append(_decode_range(int(bounds[0]), int(bounds[1])))
        for proc, recv in procs:
            try:
                errors.append(recv.recv())
            except EOFError:
                proc.join()
                errors.append(f"a decoding worker died (exit code {proc.exitcode}); out of memory?")
            proc.join()
    finally:
        _JOB = None
        for proc, recv in procs:  # only still running when the parent failed
            if proc.is_alive():
                proc.terminate()
                proc.join()
            recv.close()
    if msg := next((e for e in errors if e), None):
        raise UserError(msg)
    return torch.from_numpy(out)


def _decode_worker(lo: int, hi: int, conn: multiprocessing.connection.Connection) -> None:
    try:
        conn.send(_decode_range(lo, hi))
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent
        conn.send(f"decoding failed: {type(exc).__name__}: {exc}")
    finally:
        conn.close()


def _from_imagefolder(entries: Sequence[tuple[str, str, _Blob]], origin: str) -> _Decoded:
    """Decode (split, "<class>/<file>", blob) entries into tensors with ImageFolder's sorted class indices."""
    by_split = {s: [e for e in entries if e[0] == s] for s in SPLITS}
    if not by_split["train"] or not by_split["test"]:
        missing = " and ".join(s for s in SPLITS if not by_split[s])
        raise UserError(f"{origin}: no images under {missing}/<class>/; expected {LAYOUTS}")
    classes = sorted({rel.split("/", 1)[0] for _, rel, _ in by_split["train"]})
    index = {c: i for i, c in enumerate(classes)}
    extra = sorted({rel.split("/", 1)[0] for _, rel, _ in by_split["test"]} - set(classes))
    if extra:
        raise UserError(f"{origin}: test classes {', '.join(extra[:5])} have no training images")
    ordered = by_split["train"] + by_split["test"]
    names = [f"{s}/{rel}" for s, rel, _ in ordered]
    x = _decode_images([b for _, _, b in ordered], names)
    y = torch.tensor([index[rel.split("/", 1)[0]] for _, rel, _ in ordered], dtype=torch.int64)
    k = len(by_split["train"])
    return _Decoded(classes, x[:k], y[:k], x[k:], y[k:], "ImageFolder")


def _from_cifar(read: Callable[[str], bytes], origin: str) -> _Decoded:
    """Tensors from the pickled CIFAR-10 batches (as torchvision reads them); `read` returns a file's bytes."""
    try:
        meta = pickle.loads(read(CIFAR_META), encoding="latin1")
        classes = [str(c) for c in meta["label_names"]]
        parts = {}
        for split, files in (("train", CIFAR_TRAIN), ("test", CIFAR_TEST)):
            xs, ys = [], []
            for fname in files:
                batch = pickle.loads(read(fname), encoding="latin1")
                xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64))
            parts[split] = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad pickle can raise anything
        raise UserError(f"{origin}: unreadable CIFAR-10 batch files ({str(exc).splitlines()[0][:100]})") from None
    return _Decoded(classes, *parts["train"], *parts["test"], "CIFAR-10 batches")


# --------------------------------------------------------------------------------------------- tar archives


def _tar_bytes(path: Path) -> bytes:
    """The uncompressed tar stream of `path` (gzip, bzip2, xz or none, told by the magic bytes)."""
    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        if raw[:3] == b"BZh":
            return bz2.decompress(raw)
        if raw[:6] == b"\xfd7zXZ\x00":
            return lzma.decompress(raw)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise UserError(f"{path.name} is a corrupt archive ({exc}); expected {LAYOUTS}") from None
    return raw


def _tar_members(path: Path) -> dict[str, memoryview]:
    """Regular files of the archive as views into its uncompressed bytes (read with tarfile)."""
    buf = _tar_bytes(path)
    try:
        with tarfile.open(fileobj=io.BytesIO(buf)) as tf:
            view = memoryview(buf)
            return {m.name: view[m.offset_data : m.offset_data + m.size] for m in tf.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as exc:
        reason = str(exc).splitlines()[0].rstrip(":")
        raise UserError(f"{path.name} is not a readable tar archive ({reason}); expected {LAYOUTS}") from None


def _decode_tar(path: Path) -> _Decoded:
    members = {}
    for name, blob in _tar_members(path).items():
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if parts and not any(p.startswith(".") or p == "__MACOSX" for p in parts):
            members["/".join(parts)] = blob
    cifar = [n for n in members if n.split("/")[-1] == "data_batch_1"]
    if cifar:
        prefix = cifar[0][: -len("data_batch_1")]

        def read(fname: str) -> bytes:
            if prefix + fname not in members:
                raise UserError(f"{path.name}: CIFAR-10 archive lacks {prefix + fname}")
            return bytes(members[prefix + fname])

        return _from_cifar(read, path.name)
    entries, prefixes = [], set()
    for name, blob in members.items():
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] in SPLITS and name.lower().endswith(IMG_EXTENSIONS):
            prefixes.add("/".join(parts[:-3]))
            entries.append((parts[-3], "/".join(parts[-2:]), blob, name))
    if len(prefixes) > 1:
        shown = ", ".join(sorted(p or "." for p in prefixes)[:3])
        raise UserError(f"{path.name} holds several train/test trees ({shown}); expected one ImageFolder")
    entries.sort(key=lambda e: e[3])
    return _from_imagefolder([(s, rel, b) for s, rel, b, _ in entries], path.name)


def _decode_source(src: _Source) -> _Decoded:
    log.info("decoding %s (%s) once; later loads read the cache", src.path.name, src.kind)
    if src.kind == "tar":
        return _decode_tar(src.path)
    if src.kind == "cifar":
        return _from_cifar(lambda f: (src.path / f).read_bytes(), str(src.path))
    return _from_imagefolder(_list_folder(src.path), str(src.path))


# --------------------------------------------------------------------------------------------- the cache


def _atomic_write(path: Path, write: Callable[[Path], None]) -> bool:
    """Write through a temporary file and os.replace; False (with a warning) when the cache is not writable."""
    try:
        atomic_write(path, write)
        return True
    except OSError as exc:
        log.warning("cannot write cache file %s (%s); continuing without it", path.name, exc.strerror or exc)
        return False


def _decoded_path(data_dir: Path, fingerprint: str) -> Path:
    return data_dir / f"dataset-{fingerprint}.v{CACHE_VERSION}.pt"


def _save_decoded(data: ImageData, path: Path) -> None:
    obj = {
        "version": CACHE_VERSION, "name": data.name, "classes": list(data.classes), "fingerprint": data.fingerprint,
        "source": data.source, "counts": [len(data.train_y), len(data.test_y)],
        "train_x": data.train_x, "train_y": data.train_y, "test_x": data.test_x, "test_y": data.test_y,
    }
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _load_decoded(path: Path, fingerprint: str | None = None) -> ImageData:
    """The cached dataset at `path`; CorruptCacheError when it cannot be read or fails validation."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zips and bad pickles raise many types
        raise CorruptCacheError(str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__) from None
    try:
        if not isinstance(obj, dict) or obj.get("version") != CACHE_VERSION:
            raise CorruptCacheError("unknown format")
        if fingerprint is not None and obj["fingerprint"] != fingerprint:
            raise CorruptCacheError("fingerprint mismatch")
        classes = obj["classes"]
        if not classes or not all(isinstance(c, str) for c in classes):
            raise CorruptCacheError("bad class list")
        data = ImageData(str(obj["name"]), list(classes), obj["train_x"], obj["train_y"], obj["test_x"],
                         obj["test_y"], str(obj["fingerprint"]), str(obj["source"]))
        if [len(data.train_y), len(data.test_y)] != list(obj["counts"]) or not len(data.train_y):
            raise CorruptCacheError("image counts do not match")
        for y in (data.train_y, data.test_y):
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
                raise CorruptCacheError("labels out of range")
    except CorruptCacheError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptCacheError(f"invalid contents ({exc})") from None
    return data


def _try_cached(path: Path, fingerprint: str | None = None) -> ImageData | None:
    if not path.is_file():
        return None
    try:
        data = _load_decoded(path, fingerprint)
    except CorruptCacheError as exc:
        log.warning("corrupt dataset cache %s (%s): decoding again", path.name, exc)
        path.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # most recently used first when scanning cache/data/
    return data


def _load_source(src: _Source, data_dir: Path) -> ImageData:
    """Load `src` from the decoded cache, or decode it and fill the cache."""
    fp = src.fingerprint()
    path = _decoded_path(data_dir, fp)
    if (data := _try_cached(path, fp)) is not None:
        return data
    dec = _decode_source(src)
    n = len(dec.train_y) + len(dec.test_y)
    c, h, w = dec.train_x.shape[1:]
    source = f"{src.path.name}: {dec.layout}{' tar' if src.kind == 'tar' else ''}, {n:,} images {c}x{h}x{w}"
    data = ImageData(src.name, dec.classes, dec.train_x, dec.train_y, dec.test_x, dec.test_y, fp, source)
    _save_decoded(data, path)
    return data


# --------------------------------------------------------------------------------------------- locating data


def _scan_cache(data_dir: Path) -> ImageData | None:
    """A raw source under data_dir (the folder itself, or an entry in it), else the most recently used decoded
    dataset there."""
    if not data_dir.is_dir():
        return None
    candidates = [data_dir] + sorted(p for p in data_dir.iterdir() if not p.name.startswith((".", "dataset-")))
    for cand in candidates:
        if cand.is_file() and not _is_tar_name(cand):
            continue
        try:
            src = _resolve(cand, "cache/data")
        except UserError:
            continue
        return _load_source(src, data_dir)
    decoded = sorted(data_dir.glob(f"dataset-*.v{CACHE_VERSION}.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in decoded:
        if (data := _try_cached(path)) is not None:
            log.info("using the dataset decoded last: %s (%s)", data.name, data.source)
            return data
    return None


def _reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within `timeout` seconds (DNS included), else the reason."""
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as exc:
            result.append(str(exc) or type(exc).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return result[0] if result else f"no answer from {host} in {timeout:.0f} s"


def _download_cifar(data_dir: Path) -> Path:
    """Download CIFAR-10 with torchvision into data_dir; returns the cifar-10-batches-py folder. Fails fast
    (about DOWNLOAD_TIMEOUT_S at most) when the host is unreachable."""
    if reason := _reachable(CIFAR_URL_HOST, 443, DOWNLOAD_TIMEOUT_S):
        raise OSError(f"cannot reach {CIFAR_URL_HOST}: {reason}")
    from torchvision.datasets import CIFAR10

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60.0)
    try:
        log.warning("downloading CIFAR-10 (170 MB) into %s", data_dir)
        CIFAR10(str(data_dir), train=True, download=True)
    finally:
        socket.setdefaulttimeout(previous)
    return data_dir / CIFAR_DIR


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(PROJECT_ROOT).as_posix() + "/"
    except ValueError:
        return f"{path}/"


def load_data(path: str | os.PathLike[str] | None = None, *, cache_dir: Path | None = None,
              download: bool = True) -> ImageData:
    """The dataset at `path` (else $COINFER_DATA, else whatever is under <cache>/data/, else torchvision's CIFAR-10
    download into <cache>/data/), decoded once and cached there by content hash."""
    data_dir = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "data"
    env = os.environ.get("COINFER_DATA", "").strip()
    if path is not None and str(path).strip():
        return _load_source(_resolve(Path(path).expanduser(), "--data"), data_dir)
    if env:
        return _load_source(_resolve(Path(env).expanduser(), "COINFER_DATA"), data_dir)
    if (data := _scan_cache(data_dir)) is not None:
        return data
    reason = "disabled"
    if download:
        try:
            root = _download_cifar(data_dir)
            return _load_source(_resolve(root, "download"), data_dir)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            reason = f"failed: {(str(exc).splitlines() or [type(exc).__name__])[0][:160]}"
    raise DataNotFoundError(
        f"no dataset found: pass --data PATH ({LAYOUTS}), set COINFER_DATA=PATH, or place one under "
        f"{_display(data_dir)} (torchvision's CIFAR-10 download {reason})"
    )


# --------------------------------------------------------------------------------------------- subsets and splits


def _stratified_pick(labels: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k indices with classes in proportion (seeded), and the remaining indices; both in seeded random order."""
    n = len(labels)
    perm = torch.randperm(n, generator=generator)
    lab = labels[perm]
    counts = torch.bincount(lab, minlength=1)
    order = torch.argsort(lab, stable=True)  # grouped by class, random within
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[lab[order]]
    key = (rank.to(torch.float64) + 0.5) / counts[lab].to(torch.float64)  # position within its class, in (0, 1)
    by_key = torch.argsort(key, stable=True)
    chosen, rest = perm[by_key[:k]], perm[by_key[k:]]
    chosen = chosen[torch.randperm(k, generator=generator)]
    rest = rest[torch.randperm(n - k, generator=generator)]
    return chosen, rest


def subset(data: ImageData, train_limit: int | None, test_limit: int | None, seed: int = 0) -> ImageData:
    """A seeded, class-stratified subset of at most `train_limit` training and `test_limit` test images (None: all),
    in random order. The fingerprint gains a suffix naming the sizes and seed; `data` itself when nothing is cut."""
    gen = torch.Generator().manual_seed(seed)
    parts, cut = [], False
    for x, y, limit in ((data.train_x, data.train_y, train_limit), (data.test_x, data.test_y, test_limit)):
        if limit is not None and limit < 1:
            raise UserError(f"subset sizes must be positive, got {limit}")
        if limit is None or limit >= len(y):
            parts += [x, y]
            continue
        idx, _ = _stratified_pick(y, limit, gen)
        parts += [x[idx], y[idx]]
        cut = True
    if not cut:
        return data
    suffix = f"-sub{len(parts[1])}x{len(parts[3])}s{seed}"
    source = f"{data.source}; subset {len(parts[1]):,}/{len(parts[3]):,} (seed {seed})"
    return ImageData(data.name, list(data.classes), *parts, data.fingerprint + suffix, source)


def train_val_split(data: ImageData, val_fraction: float,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded, class-stratified hold-out of the training set: (train_x, train_y, val_x, val_y), each in random order.
    Validation images serve every decision the engine makes; the test split only the reported figures."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(data.train_y)
    if n < 2:
        raise UserError(f"need at least 2 training images for a validation split, have {n}")
    k = min(max(1, round(n * val_fraction)), n - 1)
    val, train = _stratified_pick(data.train_y, k, torch.Generator().manual_seed(seed))
    return data.train_x[train], data.train_y[train], data.train_x[val], data.train_y[val]


# --------------------------------------------------------------------------------------------- batches


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                    generator: torch.Generator | None = None,
                    drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches: views in order, or gathered by a seeded permutation (drawn on the generator's device)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(x)
    stop = n - n % batch_size if drop_last else n
    perm = None
    if shuffle:
        device = generator.device if generator is not None else x.device
        perm = torch.randperm(n, generator=generator, device=device).to(x.device, non_blocking=True)
    for i in range(0, stop, batch_size):
        if perm is None:
            yield x[i : i + batch_size], y[i : i + batch_size]
        else:
            idx = perm[i : i + batch_size]
            yield x.index_select(0, idx), y.index_select(0, idx.to(y.device))


def augment_batch(x_uint8: torch.Tensor, generator: torch.Generator | None, padding: int = 4) -> torch.Tensor:
    """Random crop with `padding` zero pixels on each side plus random horizontal flip, for a whole (N, C, H, W)
    batch at once: pad, then gather every output pixel at its per-sample offset. Same dtype and device as x."""
    n, c, h, w = x_uint8.shape
    span = 2 * padding + 1
    device = generator.device if generator is not None else x_uint8.device
    r = torch.randint(0, span * span * 2, (n,), generator=generator, device=device)
    r = r.to(x_uint8.device, non_blocking=True)  # host-to-device from pageable memory: no stream sync
    flip, dx, dy = (r % 2).bool(), (r // 2) % span, r // (2 * span)
    ar_h = torch.arange(h, device=x_uint8.device)
    ar_w = torch.arange(w, device=x_uint8.device)
    rows = dy[:, None] + ar_h
    cols = dx[:, None] + ar_w
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x_uint8, (padding, padding, padding, padding)).reshape(n, c, -1)
    index = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.gather(2, index).reshape(n, c, h, w)


def resize_batch(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The images of a float (N, C, H, W) batch at `size` (height, width; an int: square), for progressive resizing:
    2x2 average pooling for an exact half, antialiased bilinear otherwise; unchanged at the batch's own size."""
    h, w = (size, size) if isinstance(size, int) else size
    if x.shape[-2:] == (h, w):
        return x
    if x.shape[-2:] == (2 * h, 2 * w):
        return F.avg_pool2d(x, 2)
    return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor | Sequence[float], std: torch.Tensor | Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, as `dtype`; mean and std in [0, 1] units (ImageData.mean/std)."""
    m = torch.as_tensor(mean, dtype=dtype, device=x_uint8.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=dtype, device=x_uint8.device).reshape(1, -1, 1, 1)
    return torch.addcmul(-m / s, x_uint8.to(dtype), 1.0 / (255.0 * s))


# --------------------------------------------------------------------------------------------- PNG input size


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    img = np.ascontiguousarray(img[:, :, 0] if img.shape[2] == 1 else img)
    Image.fromarray(img).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def png_bits(images_uint8: torch.Tensor) -> np.ndarray:
    """Lossless PNG size in bits of each (C, H, W) uint8 image: PIL's PNG encoder with its default settings
    (compress_level 6) and optimize=False. int64 (N,)."""
    arr = images_uint8.detach().cpu().permute(0, 2, 3, 1).numpy()
    return np.array([8 * len(_png_bytes(img)) for img in arr], dtype=np.int64)


def mean_png_bits(data: ImageData, cache_dir: Path | None = None) -> float:
    """Mean PNG size in bits of the test images (the server-only cost), cached per fingerprint in
    <cache>/data/png-<fingerprint>.json."""
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "data" / f"png-{data.fingerprint}.json"
    n = len(data.test_y)
    if path.is_file():
        try:
            obj = json.loads(path.read_text())
            value = float(obj["mean_bits"])
            fresh = (obj["fingerprint"], obj["images"], obj["settings"]) == (data.fingerprint, n, PNG_SETTINGS)
            if fresh and math.isfinite(value) and value > 0:
                return value
            raise ValueError("stale entry")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("corrupt PNG-size cache %s (%s): recomputing it", path.name, str(exc)[:80])
    value = float(png_bits(data.test_x).mean()) if n else 0.0
    text = json.dumps({"fingerprint": data.fingerprint, "images": n, "settings": PNG_SETTINGS, "mean_bits": value})
    _atomic_write(path, lambda tmp: tmp.write_text(text))
    return value
