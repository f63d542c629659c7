"""Writing files atomically: through a temporary file beside the target and `os.replace`, so a reader never sees a
half-written file and a killed writer leaves the previous one (or none)."""

from __future__ import annotations

import contextlib
import os
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
