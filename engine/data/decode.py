"""Decoding encoded images (bytes or files) into one uint8 (N, C, H, W) tensor with PIL, within the limits of
`engine.data.limits` (each file's size and each image's pixels before decoding it, the whole tensor before allocating
it). On Linux, forked workers share the output buffer; the job they work on is a module-level global read after the
fork, so one decode runs at a time per process."""

from __future__ import annotations

import io
import mmap
import multiprocessing
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.data.jpeg import jpeg_header
from engine.data.limits import MAX_DECODED_BYTES, MAX_FILE_BYTES, MAX_IMAGE_PIXELS, MAX_IMAGES
from engine.errors import UserError
from engine.files import read_bounded

_PARALLEL_MIN_IMAGES = 2048
_DECODE_LOCK = threading.Lock()  # one decode at a time per process: forked workers read the module-level job
Blob = bytes | memoryview | Path
_JOB: tuple[Sequence[Blob], Sequence[str], np.ndarray, tuple[int, ...], str, tuple | None] | None = None


def _read(blob: Blob, name: str) -> bytes | memoryview:
    """The encoded image: the bytes given, or a regular file's of at most MAX_FILE_BYTES."""
    if not isinstance(blob, Path):
        return blob
    return read_bounded(blob, MAX_FILE_BYTES, lambda m: UserError(f"image {name}: {m}; remove it from the dataset"))


def _open_image(blob: Blob, name: str) -> tuple[np.ndarray, str]:
    """One image as an (H, W, C) uint8 array and its mode (L, LA, RGB or RGBA); its header's size is checked
    against MAX_IMAGE_PIXELS before any pixel is decoded."""
    data = _read(blob, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is lower
            im = Image.open(io.BytesIO(data))
        with im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{im.width}x{im.height}")
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                if im.mode == "1" or im.mode.startswith("I") or im.mode == "F":
                    raise UserError(f"{name}: image mode {im.mode} is not 8-bit; convert the images to L or RGB")
                im = im.convert("RGBA" if im.mode == "P" and "transparency" in im.info else "RGB")
            im.load()
            mode, shape = im.mode, (im.height, im.width, len(im.getbands()))
            arr = np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(shape)  # faster than np.asarray(im)
    except UserError:
        raise
    except Image.DecompressionBombError:  # PIL's own limit or ours, both read from the header
        raise UserError(f"image {name} claims more than the {MAX_IMAGE_PIXELS:,} pixels of an image in a dataset; "
                        "resize the images") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"cannot decode image {name}: {reason}") from None
    return arr, mode


def _describe(shape: tuple[int, ...], mode: str) -> str:
    return f"{shape[1]}x{shape[0]} {mode}"


def _decode_range(lo: int, hi: int) -> str | None:
    """Decode images lo..hi of the current job into its output array; an error message, or None."""
    assert _JOB is not None
    blobs, names, out, shape, mode, jpeg = _JOB
    try:
        for i in range(lo, hi):
            blob = _read(blobs[i], names[i])
            if jpeg is not None and jpeg_header(blob) == jpeg:  # same frame as the first: skip PIL's header parser
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


def decode_images(blobs: Sequence[Blob], names: Sequence[str]) -> torch.Tensor:
    """Decode encoded images into one uint8 tensor with PIL. Forked workers share the output buffer on Linux. JPEGs
    whose frame header matches the first image's go straight to PIL's JPEG decoder (Image.frombytes), skipping
    Image.open's header parsing.

    Args:
        blobs: the encoded images: bytes, views into an archive, or files.
        names: a name for each image, used in error messages.

    Returns:
        uint8 (N, C, H, W) with C the first image's band count (L: 1, LA: 2, RGB: 3, RGBA: 4).

    Raises:
        UserError: an image cannot be decoded, or differs from the first in size or mode.
    """
    with _DECODE_LOCK:
        return _decode_images_locked(blobs, names)


def _decode_images_locked(blobs: Sequence[Blob], names: Sequence[str]) -> torch.Tensor:
    global _JOB
    first, mode = _open_image(blobs[0], names[0])
    shape, size = first.shape, first.size
    del first  # decoded again below, into its place
    n = len(blobs)
    if n > MAX_IMAGES or n * size > MAX_DECODED_BYTES:
        raise UserError(f"{n:,} images of {_describe(shape, mode)} decode to {n * size:,} bytes, over the "
                        f"{MAX_DECODED_BYTES:,} of a dataset (or more than {MAX_IMAGES:,} images); use fewer or "
                        "smaller images")
    workers = _worker_count(n)
    nbytes = n * int(np.prod(shape))
    buf: mmap.mmap | bytearray = mmap.mmap(-1, max(nbytes, 1)) if workers > 1 else bytearray(nbytes)
    out = np.frombuffer(buf, dtype=np.uint8, count=nbytes).reshape(n, shape[2], shape[0], shape[1])
    bounds = np.linspace(0, n, workers + 1).astype(int)
    first_blob = _read(blobs[0], names[0])
    jpeg = jpeg_header(first_blob)  # JPEGs with this frame header and mode decode about twice as fast
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
