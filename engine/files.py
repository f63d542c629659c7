"""Writing files atomically (through a temporary file beside the target and `os.replace`, so a reader never sees a
half-written file and a killed writer leaves the previous one, or none) and reading files from elsewhere within a
size limit checked before reading."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Replace `path` with what `write` puts into a temporary file in the same folder (created when missing).

    Args:
        path: the file to write.
        write: called with the temporary file's path; writes the whole contents there.

    Raises:
        OSError (or whatever `write` raises), after removing the temporary file; `path` is then unchanged.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def read_bounded(path: Path, max_bytes: int, reject: Callable[[str], Exception]) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, checked before reading: a FIFO or a device (which would
    block or never end) and a larger file are refused without reading them.

    Args:
        path: the file (a symbolic link is followed).
        max_bytes: the size limit.
        reject: builds the error raised for a problem, from a one-line message.

    Returns:
        The file's bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting for a writer
    except OSError as exc:
        raise reject(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise reject(f"cannot read {path}: not a regular file")
        raise reject(f"{path.name} has {info.st_size:,} bytes, over the {max_bytes:,}-byte limit")
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise reject(f"{path.name} grew past the {max_bytes:,}-byte limit while it was read")
    return data
