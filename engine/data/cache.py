"""The decoded cache under `<cache>/data/`: one `dataset-<fingerprint>.v<version>.pt` per source, written
atomically, validated on load (a corrupt file is dropped and decoded again), and scanned for a dataset when no source
is named."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from engine.data.images import ImageData
from engine.data.sources import Source, decode_source, is_tar_name, resolve_source
from engine.errors import CorruptCacheError, UserError
from engine.files import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def write_cache_file(path: Path, write: Callable[[Path], None]) -> bool:
    """Write a cache file atomically (engine.files.atomic_write); a cache that is not writable only warns.

    Args:
        path: the cache file.
        write: called with a temporary file's path; writes the whole contents there.

    Returns:
        True when written; False (with a warning) when the cache is not writable.
    """
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
    write_cache_file(path, lambda tmp: torch.save(obj, tmp))


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


def load_source(src: Source, data_dir: Path) -> ImageData:
    """Load a source from the decoded cache, or decode it and fill the cache.

    Args:
        src: the source (see `resolve_source`).
        data_dir: the cache folder, `<cache>/data`.

    Returns:
        The decoded dataset, its fingerprint the source's.
    """
    fp = src.fingerprint()
    path = _decoded_path(data_dir, fp)
    if (data := _try_cached(path, fp)) is not None:
        return data
    dec = decode_source(src)
    n = len(dec.train_y) + len(dec.test_y)
    c, h, w = dec.train_x.shape[1:]
    source = f"{src.path.name}: {dec.layout}{' tar' if src.kind == 'tar' else ''}, {n:,} images {c}x{h}x{w}"
    data = ImageData(src.name, dec.classes, dec.train_x, dec.train_y, dec.test_x, dec.test_y, fp, source)
    _save_decoded(data, path)
    return data


def scan_cache(data_dir: Path) -> ImageData | None:
    """The dataset found in the cache folder, when no source is named.

    Args:
        data_dir: the cache folder, `<cache>/data`.

    Returns:
        A raw source under data_dir (the folder itself, or an entry in it), loaded; else the most recently used
        decoded dataset there; None when there is neither.
    """
    if not data_dir.is_dir():
        return None
    candidates = [data_dir] + sorted(p for p in data_dir.iterdir() if not p.name.startswith((".", "dataset-")))
    for cand in candidates:
        if cand.is_file() and not is_tar_name(cand):
            continue
        try:
            src = resolve_source(cand, "cache/data")
        except UserError:
            continue
        return load_source(src, data_dir)
    decoded = sorted(data_dir.glob(f"dataset-*.v{CACHE_VERSION}.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in decoded:
        if (data := _try_cached(path)) is not None:
            log.info("using the dataset decoded last: %s (%s)", data.name, data.source)
            return data
    return None
