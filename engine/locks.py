"""Advisory file locks (flock) between processes: several sweep workers wanting the same base model or cached
fine-tuning run take the lock, one trains it and the others then load it. The kernel releases a lock whose holder
dies. A no-op where fcntl is missing (not POSIX)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path, waiting: Callable[[], None] | None = None, poll_s: float = 0.5) -> Iterator[None]:
    """An exclusive lock on the file `path` (created if missing) held for the block.

    Args:
        path: the lock file.
        waiting: called every `poll_s` seconds while another process holds the lock (a progress callback may raise
            to give up); without it the call blocks until the lock is free.
        poll_s: the polling period while waiting.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        if waiting is None:
            fcntl.flock(f, fcntl.LOCK_EX)
        else:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waiting()
                    time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def exclusive(path: Path) -> contextlib.AbstractContextManager[None]:
    """The lock of a cached file: `file_lock` on `<path>.lock` beside it, blocking until it is free."""
    return file_lock(path.with_name(path.name + ".lock"))
