"""A search in the background: the command line that runs a study for an edge environment (`SearchRequest`), and a
detached `python -m engine search` process started from it (`start`) that holds the study's lock file under
`cache/search/` for as long as it runs, so that a second start of the same study is refused while the first runs
(`running`); the kernel releases the lock when the process ends, however it ends. Running the same request again
resumes the study (`Search` keeps it in the studies' database).

The request keeps each option as the text the command reads, and derives the study's environment and accuracy drop
from those texts the way the command does, so that a page that starts a study computes the same study name as the
process that runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.config import BaseModelConfig
from engine.errors import UserError
from engine.latency import DEVICES, DeviceProfile, resolve_device, to_rate_bps
from engine.paths import PROJECT_ROOT, cache_dir
from engine.search.objective import OBJECTIVES, Environment
from engine.search.study import SearchConfig, storage_path

METHODS = ("three_step",)  # what the command searches by default (its --method)
STUDY_SEED = 0  # the command's default --study-seed


class SearchRunning(UserError):
    """The study is being run by another process."""


def device_arg(device: DeviceProfile) -> str:
    """The `--device`/`--server` text for a device: its preset's name when it has the preset's figures, else its
    figures as SPEED[,MEMORY] (exact: the command reads back the same floats)."""
    preset = DEVICES.get(device.name) if device.name in DEVICES else None
    if preset is not None and math.isclose(preset.flops_per_s, device.flops_per_s, rel_tol=1e-9) and (
            preset.memory_bytes == device.memory_bytes
            or math.isclose(preset.memory_bytes, device.memory_bytes, rel_tol=1e-9)):
        return preset.name
    memory = f",{device.memory_bytes!r}B" if math.isfinite(device.memory_bytes) else ""
    return f"{device.flops_per_s!r}FLOP/s{memory}"


def rate_arg(rate_bps: float) -> str:
    """The `--rate` text for a rate in bits/s: in kB/s when that text reads back as the same float ("40kB/s"),
    else in bits/s."""
    kbps = repr(float(rate_bps) / 8e3)
    text = f"{kbps[:-2] if kbps.endswith('.0') else kbps}kB/s"
    try:
        if to_rate_bps(text) == float(rate_bps):
            return text
    except UserError:
        pass
    return f"{float(rate_bps)!r}bit/s"


@dataclass(frozen=True)
class SearchRequest:
    """What `python -m engine search` is told, option by option, as the texts it reads.

    Args:
        profile: the budget profile; device, server: `device_arg` texts; rate: a rate text (bits/s when bare);
        delay_ms, drop_points: numbers as text (milliseconds, points of accuracy); objective: a key of `OBJECTIVES`;
        width, model, weights, data: the base model's options ("" leaves the command's default); budget: a duration
        text ("" for none); trials: a number of trials (None for none); workers: local worker processes; memory:
        the device's `memory_figure`.
    """

    profile: str
    device: str = "pi3"
    server: str = "rtx2080ti"
    rate: str = "40kB/s"
    delay_ms: str = "0.0"
    drop_points: str = "2.0"
    objective: str = "latency"
    width: str = ""
    model: str = ""
    weights: str = ""
    data: str = ""
    budget: str = ""
    trials: int | None = None
    workers: int = 1
    memory: str = "model"

    @classmethod
    def of(cls, profile: str, device: DeviceProfile, server: DeviceProfile, rate_bps: float, *, delay_s: float = 0.0,
           drop: float = 0.02, objective: str = "latency", width: float | None = None, model: str = "",
           weights: str = "", data: str | None = None, budget_min: float | None = None, trials: int | None = None,
           workers: int = 1) -> SearchRequest:
        """The request for an environment given as figures (a page's sidebar): `drop` is a fraction, `budget_min`
        worker minutes."""
        return cls(profile, device_arg(device), device_arg(server), rate_arg(rate_bps), repr(float(delay_s) * 1e3),
                   repr(float(drop) * 100), objective, "" if width is None else repr(float(width)), model, weights,
                   data or "", "" if budget_min is None else f"{float(budget_min)!r}min", trials, workers,
                   device.memory_figure)

    def argv(self) -> list[str]:
        """The command's arguments, after `python -m engine`."""
        out = ["search", "--profile", self.profile, "--device", self.device, "--server", self.server, "--rate",
               self.rate, "--delay", self.delay_ms, "--drop", self.drop_points, "--objective", self.objective,
               "--workers", str(self.workers)]
        for flag, value in (("--width", self.width), ("--model", self.model), ("--weights", self.weights),
                            ("--data", self.data), ("--budget", self.budget)):
            if value:
                out += [flag, value]
        if self.trials is not None:
            out += ["--trials", str(self.trials)]
        if self.memory != "model":
            out += ["--memory", self.memory]
        return out

    def environment(self) -> Environment:
        """The study's environment, built from the texts as the command builds it."""
        device = dataclasses.replace(resolve_device(self.device), memory_figure=self.memory)
        return Environment(device, resolve_device(self.server), to_rate_bps(self.rate), float(self.delay_ms) / 1e3)

    @property
    def drop(self) -> float:
        """The allowed accuracy drop as a fraction, as the command reads it."""
        return float(self.drop_points) / 100.0

    def config(self, base: BaseModelConfig) -> SearchConfig:
        """The study the command runs for `base` (its name is the study's)."""
        if self.objective not in OBJECTIVES:
            raise UserError(f"the objective is one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        return SearchConfig(self.profile, base, self.environment(), self.objective, self.drop, METHODS, STUDY_SEED)


# -- the background process --------------------------------------------------------------------------------------


def run_dir(cache: Path | None = None) -> Path:
    """Where the studies' lock files, run records and logs are: beside the studies' database."""
    return storage_path(cache).parent


def lock_path(name: str, cache: Path | None = None) -> Path:
    return run_dir(cache) / f"{name}.lock"


def record_path(name: str, cache: Path | None = None) -> Path:
    """The record of the study's last start (pid, time, log file, command; its exit status once reaped)."""
    return run_dir(cache) / f"{name}.run.json"


def running(name: str, cache: Path | None = None) -> bool:
    """Whether a process started by `start` is running the study (it holds the study's lock file)."""
    path = lock_path(name, cache)
    if not path.exists():
        return False
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: go by the recorded pid
        record = last_run(name, cache)
        return bool(record) and record.get("returncode") is None and _alive(int(record.get("pid", 0)))
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def last_run(name: str, cache: Path | None = None) -> dict[str, Any] | None:
    """The record of the study's last start, or None (never started here, or an unreadable record)."""
    try:
        record = json.loads(record_path(name, cache).read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(record, dict) and _is_int(record.get("pid")) and _is_number(record.get("started_at"))
          and isinstance(record.get("log"), str) and (record.get("returncode") is None
                                                      or _is_int(record.get("returncode"))))
    return record if ok else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def start(request: SearchRequest, name: str, cache: Path | None = None,
          command: Sequence[str] | None = None) -> int:
    """Start the study in a detached process that holds its lock for as long as it runs; its output goes to a log
    file under `cache/search/logs/`.

    Args:
        request: what the command is told; name: the study's name (`request.config(base).name`); cache: the cache
            the process uses (default: this one's); command: the program to run instead of `python -m engine search`.
    Returns:
        the process id.
    Raises:
        SearchRunning: a process started here runs the study already.
    """
    cache = cache_dir() if cache is None else cache
    try:
        return _start(request, name, cache, command)
    except OSError as exc:
        raise UserError(f"the search could not be started: {exc.strerror or exc} ({exc.filename or 'the process'})"
                        ) from None


def _start(request: SearchRequest, name: str, cache: Path, command: Sequence[str] | None) -> int:
    folder = run_dir(cache)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(name, cache), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            if running(name, cache):
                raise SearchRunning(f"study {name} is running already") from None
        except OSError:
            raise SearchRunning(f"study {name} is running already") from None
        log_path = folder / "logs" / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.log"
        argv = list(command) if command is not None else [sys.executable, "-m", "engine", *request.argv()]
        env = {**os.environ, "COINFER_CACHE": str(cache), LOCKED_ENV: name}
        with open(log_path, "ab") as out:
            # the child inherits the locked descriptor: the lock is held until it (not this process) ends
            proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(fd,))
        record = {"name": name, "pid": proc.pid, "started_at": time.time(), "log": str(log_path),
                  "argv": request.argv(), "returncode": None}
        _write_record(name, cache, record)
    finally:
        os.close(fd)
    threading.Thread(target=_reap, args=(proc, name, cache), name="coinfer-reap-search", daemon=True).start()
    return proc.pid


LOCKED_ENV = "COINFER_SEARCH_LOCKED"  # set for a process started by `start`: it holds its study's lock already


def hold(name: str, cache: Path | None = None) -> int | None:
    """Take the study's lock for this process (the command run from a shell), so that the dashboard shows it running
    and refuses a second start; a process started by `start` holds it already (None).

    Args:
        name: the study's name; cache: its cache.
    Returns:
        the locked descriptor (held until the process ends), or None.
    Raises:
        SearchRunning: another process runs the study.
    """
    if os.environ.get(LOCKED_ENV) == name:
        return None
    run_dir(cache).mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(name, cache), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SearchRunning(f"study {name} is running already (from the dashboard or another shell): wait for it, "
                            "or stop it first") from None
    return fd


def stop(name: str, cache: Path | None = None) -> bool:
    """Ask the study's process to stop (SIGTERM: its workers give their jobs back to the queue, and the same
    request resumes it). Returns whether one was running."""
    record = last_run(name, cache)
    if not running(name, cache) or not record or not isinstance(record.get("pid"), int):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(record["pid"], signal.SIGTERM)
        return True
    return False


def log_tail(record: dict[str, Any] | None, lines: int = 3) -> str:
    """The last lines of a start's log file ("" when there is none)."""
    if not record or not isinstance(record.get("log"), str):
        return ""
    try:
        with open(record["log"], "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(line.rstrip() for line in text.splitlines()[-lines:])


def _write_record(name: str, cache: Path, record: dict[str, Any]) -> None:
    path = record_path(name, cache)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _reap(proc: subprocess.Popen, name: str, cache: Path) -> None:
    """Wait for the process (no zombie) and record its exit status."""
    code = proc.wait()
    record = last_run(name, cache)
    if record and record.get("pid") == proc.pid:
        record.update(returncode=code, finished_at=time.time())
        with contextlib.suppress(OSError):
            _write_record(name, cache, record)


def _alive(pid: int) -> bool:  # pragma: no cover - not POSIX
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return pid > 0
