"""Commands started from the dashboard as detached processes, with their progress in a JSON status file.

The child is `python -m engine ...` with COINFER_PROGRESS_FILE set; it reports (fraction, message) there and its
final state (done / failed with the error line) when it exits. Nothing is lost when the dashboard restarts: the
status file and the log stay under cache/background/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from engine.paths import PROJECT_ROOT, cache_dir

PROGRESS_ENV = "COINFER_PROGRESS_FILE"


def _dir() -> Path:
    d = cache_dir() / "background"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_status(path: Path, **fields: object) -> None:
    """Merge `fields` into the status file, atomically."""
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        status = {}
    status.update(fields, updated_at=time.time())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child of this process stays a zombie until reaped
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def status(name: str) -> dict | None:
    """The job's status: state (running, done, failed, lost), progress in [0, 1], message, error, log path."""
    path = _dir() / f"{name}.json"
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if st.get("state") == "running" and not _alive(int(st.get("pid", 0))):
        st["state"] = "lost"
        st["error"] = st.get("error") or "the process ended without reporting; see its log"
    return st


def launch(name: str, argv: list[str]) -> dict:
    """Start `python -m engine *argv` in the background unless a job of that name is already running."""
    current = status(name)
    if current and current.get("state") == "running":
        return current
    path = _dir() / f"{name}.json"
    log_path = _dir() / f"{name}.log"
    path.unlink(missing_ok=True)
    env = {**os.environ, PROGRESS_ENV: str(path)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine", *argv], cwd=PROJECT_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    write_status(path, name=name, argv=argv, pid=proc.pid, state="running", progress=0.0, message="starting",
                 started_at=time.time(), log=str(log_path))
    return status(name) or {}


class ProgressFile:
    """Progress callback that writes to the status file (at most once a second)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self._last >= 1.0 or fraction >= 1.0:
            self._last = now
            write_status(self.path, progress=round(fraction, 4), message=message)

    def finish(self, exit_code: int, error: str | None) -> None:
        done = {"progress": 1.0} if exit_code == 0 else {}
        write_status(self.path, state="done" if exit_code == 0 else "failed", exit_code=exit_code, error=error,
                     finished_at=time.time(), **done)
