"""Dataset sources: a torchvision CIFAR-10 root, an ImageFolder directory with train/ and test/, or a tar archive
of either. Recognising a source, its content fingerprint, listing an ImageFolder or a tar archive, reading the pickled
CIFAR-10 batches, and turning a source into tensors, within the limits of `engine.data.limits`."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.data.archive import is_tar, read_members
from engine.data.decode import Blob, decode_images
from engine.data.limits import MAX_DECODED_BYTES, MAX_FILE_BYTES, MAX_IMAGES
from engine.data.safe_pickle import UnsafePickleError, load_cifar_pickle
from engine.errors import UserError
from engine.files import read_bounded

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)
CIFAR_META = "batches.meta"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
LAYOUTS = "a CIFAR-10 root, an ImageFolder dir with train/ and test/, or a .tar/.tar.gz of one"


@dataclass(frozen=True)
class Source:
    """A dataset on disk, as `resolve_source` recognised it."""

    kind: str  # "cifar" (a cifar-10-batches-py folder), "folder" (ImageFolder) or "tar"
    path: Path

    @property
    def name(self) -> str:
        """The dataset's name: cifar10, the archive's name without its suffix, or the folder's name."""
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


def is_tar_name(path: Path) -> bool:
    """Whether the file name ends in a tar suffix (TAR_SUFFIXES), in any case.

    Args:
        path: the file.

    Returns:
        True for a name such as data.tar.gz or DATA.TGZ.
    """
    return path.name.lower().endswith(TAR_SUFFIXES)


def resolve_source(path: Path, origin: str) -> Source:
    """The source at a path: a tar archive, a CIFAR-10 root (or its parent) or an ImageFolder directory.

    Args:
        path: where the dataset is.
        origin: where the path came from (--data, COINFER_DATA, ...), for error messages.

    Returns:
        The source, its kind told by the layout.

    Raises:
        UserError: the path is missing or not a recognised layout.
    """
    if not path.exists():
        raise UserError(f"{origin}: {path} does not exist; expected {LAYOUTS}")
    if path.is_file():
        if is_tar_name(path) or is_tar(path):
            return Source("tar", path)
        raise UserError(f"{origin}: {path} is not a tar archive; expected {LAYOUTS}")
    if (path / CIFAR_DIR).is_dir():
        path = path / CIFAR_DIR
    if (path / "data_batch_1").is_file() or path.name == CIFAR_DIR:
        missing = [f for f in (*CIFAR_TRAIN, *CIFAR_TEST, CIFAR_META) if not (path / f).is_file()]
        if missing:
            raise UserError(f"{origin}: CIFAR-10 root {path} lacks {', '.join(missing)}; download it again")
        return Source("cifar", path)
    if (path / "train").is_dir() and (path / "test").is_dir():
        return Source("folder", path)
    raise UserError(f"{origin}: {path} is not a recognised dataset; expected {LAYOUTS}")


def _list_folder(root: Path) -> list[tuple[str, str, Path]]:
    """(split, "<class>/<file>", path) of every image under root/train/<class>/ and root/test/<class>/, sorted; a
    folder linked twice under one class (a link loop) is listed once, and more than MAX_IMAGES images are refused."""
    out = []
    for split in SPLITS:
        base = root / split
        for cls in sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith(".")):
            seen: set[str] = set()
            for dirpath, dirnames, files in os.walk(base / cls, followlinks=True):
                real = os.path.realpath(dirpath)
                if real in seen:
                    dirnames[:] = []
                    continue
                seen.add(real)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel_dir = Path(dirpath).relative_to(base).as_posix()
                for fname in sorted(files):
                    if not fname.startswith(".") and fname.lower().endswith(IMG_EXTENSIONS):
                        out.append((split, f"{rel_dir}/{fname}", Path(dirpath) / fname))
                if len(out) > MAX_IMAGES:
                    raise UserError(f"{root.name} holds more than {MAX_IMAGES:,} images, the limit of a dataset; "
                                    "use a smaller one")
    return out


@dataclass
class Decoded:
    """The tensors decoded from a source, before they become an ImageData."""

    classes: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    layout: str


def _from_imagefolder(entries: Sequence[tuple[str, str, Blob]], origin: str) -> Decoded:
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
    x = decode_images([b for _, _, b in ordered], names)
    y = torch.tensor([index[rel.split("/", 1)[0]] for _, rel, _ in ordered], dtype=torch.int64)
    k = len(by_split["train"])
    return Decoded(classes, x[:k], y[:k], x[k:], y[k:], "ImageFolder")


def _text_keys(obj: Any) -> Any:
    """A batch dict with byte-string keys (a Python 3 pickle of a Python 2 batch) keyed by text instead."""
    if not isinstance(obj, dict):
        raise TypeError(f"a CIFAR-10 batch is a dict, not {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_pickle(read: Callable[[str], bytes], fname: str, origin: str) -> dict[str, Any]:
    """One CIFAR-10 batch file, read with the restricted unpickler (no code runs from it)."""
    try:
        return _text_keys(load_cifar_pickle(read(fname)))
    except UnsafePickleError as exc:
        raise UserError(f"{origin}: {fname} is not a CIFAR-10 batch ({exc}) and was not loaded; use the "
                        "official cifar-10-python archive") from None


def _cifar_batch(batch: dict[str, Any], fname: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 3, 32, 32], labels [N]) of one batch; ValueError unless its data is a uint8 array of N rows of
    3,072 values and its labels N class indices (checked before anything is copied: a pickle can claim a list of
    millions of references to one row)."""
    data, labels = batch.get("data"), batch.get("labels", batch.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{fname}: data is not a uint8 array of rows of 3,072 values")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise ValueError(f"{fname}: {len(data):,} images but not as many labels")
    y = np.asarray(labels, dtype=np.int64)
    if y.ndim != 1 or (len(y) and not 0 <= int(y.min()) <= int(y.max()) < classes):
        raise ValueError(f"{fname}: labels outside the {classes} classes of batches.meta")
    return data.reshape(-1, 3, 32, 32), y


def _from_cifar(read: Callable[[str], bytes], origin: str) -> Decoded:
    """Tensors from the pickled CIFAR-10 batches (as torchvision reads them, but with an unpickler that admits
    only numpy arrays and plain containers); `read` returns a file's bytes."""
    try:
        meta = _read_cifar_pickle(read, CIFAR_META, origin)
        names = meta["label_names"]
        if not isinstance(names, list) or not 2 <= len(names) <= 1000:
            raise ValueError("batches.meta: label_names is not a list of class names")
        classes = [c.decode("latin-1") if isinstance(c, bytes) else str(c)[:200] for c in names]
        parts, total = {}, 0
        for split, files in (("train", CIFAR_TRAIN), ("test", CIFAR_TEST)):
            xs, ys = [], []
            for fname in files:
                x, y = _cifar_batch(_read_cifar_pickle(read, fname, origin), fname, len(classes))
                total += x.nbytes
                if total > MAX_DECODED_BYTES:
                    raise ValueError(f"its images hold more than {MAX_DECODED_BYTES:,} bytes, the limit of a dataset")
                xs.append(x)
                ys.append(y)
            parts[split] = torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad pickle can raise anything
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"{origin}: unreadable CIFAR-10 batch files ({reason}); download the dataset again") from None
    return Decoded(classes, *parts["train"], *parts["test"], "CIFAR-10 batches")


def _wanted(name: str) -> bool:
    """Whether a tar member may be part of a dataset: a CIFAR-10 batch file, or an image under train/ or test/."""
    parts = name.split("/")
    return parts[-1] in (*CIFAR_TRAIN, *CIFAR_TEST, CIFAR_META) or (
        len(parts) >= 3 and parts[-3] in SPLITS and name.lower().endswith(IMG_EXTENSIONS))


def _decode_tar(path: Path) -> Decoded:
    members = read_members(path, _wanted, f"expected {LAYOUTS}")
    cifar = [n for n in members if n.split("/")[-1] == "data_batch_1"]
    if cifar:
        prefix = cifar[0][: -len("data_batch_1")]

        def read(fname: str) -> bytes:
            if prefix + fname not in members:
                raise UserError(f"{path.name}: CIFAR-10 archive lacks {prefix + fname}")
            return members.pop(prefix + fname)  # each batch's bytes go once it is read

        return _from_cifar(read, path.name)
    entries, prefixes = [], set()
    for name in sorted(members):
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] in SPLITS and name.lower().endswith(IMG_EXTENSIONS):
            prefixes.add("/".join(parts[:-3]))
            entries.append((parts[-3], "/".join(parts[-2:]), members[name]))
    if len(prefixes) > 1:
        shown = ", ".join(sorted(p or "." for p in prefixes)[:3])
        raise UserError(f"{path.name} holds several train/test trees ({shown}); expected one ImageFolder")
    members.clear()
    return _from_imagefolder(entries, path.name)


def _read_cifar_file(root: Path) -> Callable[[str], bytes]:
    """A reader of the batch files of a CIFAR-10 root, each a regular file of at most MAX_FILE_BYTES."""
    def read(fname: str) -> bytes:
        return read_bounded(root / fname, MAX_FILE_BYTES, lambda m: UserError(
            f"{root}: {m}; download the dataset again"))

    return read


def decode_source(src: Source) -> Decoded:
    """Decode every image of a source (slow: the cache keeps the result).

    Args:
        src: the source.

    Returns:
        Its classes, images and labels per split, and a description of its layout.
    """
    log.info("decoding %s (%s) once; later loads read the cache", src.path.name, src.kind)
    if src.kind == "tar":
        return _decode_tar(src.path)
    if src.kind == "cifar":
        return _from_cifar(_read_cifar_file(src.path), str(src.path))
    return _from_imagefolder(_list_folder(src.path), str(src.path))
