"""The job queue: one SQLite row per variant id under cache/, worker processes that take jobs, report progress,
heart-beat, and write each measured row to the results store.

A job's life: queued -> running -> done | failed | cancelled (cancelling in between when asked to stop). Claims
are atomic (`BEGIN IMMEDIATE`), and every claim carries a lease token: a worker updates its job only while it
holds the lease. A worker that stops heart-beating (killed, machine gone) loses its job when the lease expires;
the job returns to the queue and the next claim runs it again, resuming long training from the last checkpointed
epoch (`engine.train.train_base`). Rows are written whole and keyed by variant id, so a job run twice leaves one
row. Cancel is cooperative (the progress callback raises `JobCancelled`); a worker that does not stop within the
grace period kills itself with SIGKILL, and its supervisor starts a fresh one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import multiprocessing
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import BaseModelConfig, VariantConfig, config_id, frozen_value
from engine.errors import UserError
from engine.paths import PROJECT_ROOT, cache_dir

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed", "cancelling", "cancelled")
ACTIVE = ("queued", "running", "cancelling")
FINISHED = ("done", "failed", "cancelled")
LEASE_S = 60.0  # a running job whose worker has not heart-beaten for this long goes back to the queue
HEARTBEAT_S = 5.0
CANCEL_GRACE_S = 15.0
MAX_ATTEMPTS = 3
BUSY_TIMEOUT_S = 30.0
WORKER_SPAWN_GUARD_S = 20.0  # two dashboards asking for a worker within this window start one
FAILED_STARTS = 3  # per worker slot: workers that end in error without any job moving before a pool gives up
BASE_SHARE = 0.6  # of a job's progress bar, when its base model must be trained first

_DDL = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    method TEXT,
    split TEXT,
    profile TEXT,
    base_id TEXT,
    spec TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    priority INTEGER NOT NULL DEFAULT 0,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT {MAX_ATTEMPTS},
    worker TEXT,
    worker_pid INTEGER,
    lease TEXT,
    lease_s REAL,
    heartbeat REAL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    cancel_requested_at REAL,
    cancel_grace_s REAL,
    error TEXT,
    traceback TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (status, priority, submitted_at);
CREATE INDEX IF NOT EXISTS jobs_base ON jobs (base_id, method);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    heartbeat REAL NOT NULL,
    lease_s REAL NOT NULL,
    job_id TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
"""


class JobCancelled(BaseException):  # noqa: N818 - like KeyboardInterrupt, a method's `except Exception` can't eat it
    """Raised inside a job's progress callback once the job is marked cancelling."""


class JobLost(BaseException):  # noqa: N818
    """Raised inside a job's progress callback when another worker holds its lease (this one was presumed dead)."""


def default_path() -> Path:
    return cache_dir() / "jobs.sqlite"


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs to rebuild and measure one variant: the method, split and knobs, the base model's full
    config, the profile (data subset and budgets) and where the data is. `kind="data"` locates or downloads a
    dataset instead."""

    method: str
    split: str
    profile: str
    base: dict[str, Any]
    knobs: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    kind: str = "variant"

    @staticmethod
    def for_variant(cfg: VariantConfig, profile: str, data: str | os.PathLike[str] | None) -> JobSpec:
        """The spec of `cfg`; a data path is made absolute, since workers may run elsewhere."""
        path = str(Path(data).expanduser().resolve()) if data else None
        return JobSpec(cfg.method, cfg.split, profile, dataclasses.asdict(cfg.base), dict(cfg.knobs), path)

    @staticmethod
    def for_data(data: str | os.PathLike[str] | None) -> JobSpec:
        path = str(Path(data).expanduser().resolve()) if data else None
        return JobSpec("data", "", "", {}, {}, path, kind="data")

    @property
    def width(self) -> float:
        return float(self.base.get("width", 0.0))

    @property
    def seed(self) -> int:
        return int(self.base.get("seed", 0))

    def variant(self) -> VariantConfig:
        base = BaseModelConfig(**self.base)
        knobs = tuple(sorted(frozen_value(self.knobs).items()))
        return VariantConfig(self.method, self.split, base, knobs)

    @property
    def id(self) -> str:
        if self.kind == "data":
            return "data-" + config_id({"data": self.data})[:11]
        return self.variant().id

    @property
    def base_id(self) -> str | None:
        return None if self.kind == "data" else self.variant().base.id

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> JobSpec:
        return JobSpec(**json.loads(text))


@dataclass(frozen=True)
class Job:
    """One row of the job table."""

    id: str
    kind: str
    status: str
    spec: JobSpec
    priority: int
    progress: float
    message: str
    attempts: int
    max_attempts: int
    worker: str | None
    worker_pid: int | None
    lease: str | None
    lease_s: float | None
    heartbeat: float | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    cancel_requested_at: float | None
    error: str | None
    traceback: str | None
    result: dict | None

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def split(self) -> str:
        return self.spec.split

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def describe(self) -> str:
        what = f"data {self.spec.data or '(default)'}" if self.kind == "data" else (
            f"{self.spec.method} {self.spec.split} {self.spec.profile} w{self.spec.width:g}"
            + "".join(f" {k}={v}" for k, v in sorted(self.spec.knobs.items())))
        return f"{self.id} {what}"


_JOB_FIELDS = [f.name for f in dataclasses.fields(Job)]


def _job(row: sqlite3.Row) -> Job:
    values = {k: row[k] for k in _JOB_FIELDS if k != "spec" and k != "result"}
    return Job(spec=JobSpec.from_json(row["spec"]), result=json.loads(row["result"]) if row["result"] else None,
               **values)


def _host() -> str:
    return socket.gethostname()


class JobQueue:
    """The SQLite job table (WAL mode, one `BEGIN IMMEDIATE` transaction per change: safe across processes)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                for stmt in filter(str.strip, _DDL.split(";")):
                    conn.execute(stmt)
                conn.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open the job queue {self.path} ({exc}): set COINFER_CACHE to a writable "
                            "directory, or move a damaged file away") from None

    def __repr__(self) -> str:
        return f"JobQueue({str(self.path)!r})"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: the write lock is taken at once, so read-then-write steps are atomic."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- submitting ------------------------------------------------------------------------------------------

    def submit(self, specs: Iterable[JobSpec], priority: int | Iterable[int] = 0, *,
               requeue_finished: bool = False, max_attempts: int = MAX_ATTEMPTS) -> list[str]:
        """Queue each spec once, keyed by its id; a job already queued or running is left alone, so two sessions
        submitting the same variant queue it once. With `requeue_finished`, done/failed/cancelled jobs of these
        ids are queued again (a sweep does this for variants missing from the results store). Returns the ids."""
        specs = list(specs)
        priorities = [priority] * len(specs) if isinstance(priority, int) else list(priority)
        if len(priorities) != len(specs):
            raise ValueError("one priority per spec")
        now = time.time()
        ids = []
        with self._tx() as conn:
            for spec, prio in zip(specs, priorities, strict=True):
                job_id = spec.id
                ids.append(job_id)
                conn.execute(
                    "INSERT OR IGNORE INTO jobs (id, kind, method, split, profile, base_id, spec, status, priority, "
                    "max_attempts, submitted_at, updated_at, message) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, 'queued')",
                    (job_id, spec.kind, spec.method, spec.split, spec.profile, spec.base_id, spec.to_json(), prio,
                     max_attempts, now, now))
                if requeue_finished:
                    conn.execute(
                        "UPDATE jobs SET status='queued', progress=0, message='queued again', attempts=0, priority=?, "
                        "submitted_at=?, updated_at=?, started_at=NULL, finished_at=NULL, lease=NULL, worker=NULL, "
                        "worker_pid=NULL, cancel_requested_at=NULL WHERE id=? AND status IN ('done', 'failed', "
                        "'cancelled')", (prio, now, now, job_id))
        return ids

    # -- reading ---------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def resolve(self, prefix: str) -> Job:
        """The job whose id is `prefix` or starts with it (at least 4 characters); a UserError otherwise."""
        prefix = prefix.strip()
        if len(prefix) < 4:
            raise UserError(f"job id {prefix!r} is too short: give at least 4 characters (see `python -m engine jobs`)")
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE id LIKE ? ESCAPE '\\' LIMIT 3", (pattern,)).fetchall()
        if not rows:
            raise UserError(f"no job {prefix!r} in {self.path}; list them with `python -m engine jobs`")
        if len(rows) > 1:
            some = ", ".join(r["id"] for r in rows)
            raise UserError(f"job id {prefix!r} is ambiguous ({some}, ...): give more of it")
        return _job(rows[0])

    def jobs(self, ids: Iterable[str] | None = None, *, status: str | Iterable[str] | None = None,
             base_id: str | None = None, method: str | None = None, reap: bool = True) -> list[Job]:
        """Jobs in claim order (priority, then submission), filtered; expired leases are reaped first."""
        if reap:
            self.reap()
        where, args = [], []
        if ids is not None:
            ids = list(ids)
            if not ids:
                return []
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args += ids
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if base_id is not None:
            where.append("base_id = ?")
            args.append(base_id)
        if method is not None:
            where.append("method = ?")
            args.append(method)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY priority, submitted_at, id", args).fetchall()
        return [_job(r) for r in rows]

    def counts(self, ids: Iterable[str] | None = None) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for job in self.jobs(ids):
            out[job.status] += 1
        return out

    # -- claiming and leases ---------------------------------------------------------------------------------

    def reap(self, now: float | None = None) -> list[str]:
        """Return jobs whose worker stopped heart-beating to the queue (or fail them after `max_attempts`
        claims); a cancelling job whose worker is gone becomes cancelled. Returns the affected ids."""
        with self._tx() as conn:
            return self._reap(conn, time.time() if now is None else now)

    def _reap(self, conn: sqlite3.Connection, now: float) -> list[str]:
        rows = conn.execute("SELECT id, status, attempts, max_attempts, worker, heartbeat, lease_s FROM jobs "
                            "WHERE status IN ('running', 'cancelling') AND heartbeat + lease_s < ?", (now,)).fetchall()
        for r in rows:
            silent = f"worker {r['worker']} stopped heart-beating {now - r['heartbeat']:.0f} s ago"
            if r["status"] == "cancelling":
                conn.execute("UPDATE jobs SET status='cancelled', lease=NULL, finished_at=?, updated_at=?, message=? "
                             "WHERE id=?", (now, now, f"cancelled ({silent})", r["id"]))
            elif r["attempts"] >= r["max_attempts"]:
                conn.execute("UPDATE jobs SET status='failed', lease=NULL, finished_at=?, updated_at=?, message=?, "
                             "error=? WHERE id=?", (now, now, "failed", f"gave up after {r['attempts']} attempts: "
                                                    f"{silent}", r["id"]))
            else:
                conn.execute("UPDATE jobs SET status='queued', lease=NULL, updated_at=?, message=? WHERE id=?",
                             (now, f"queued again: {silent}", r["id"]))
            log.warning("job %s: %s; %s", r["id"], silent, "requeued" if r["status"] == "running" else "cancelled")
        conn.execute("DELETE FROM workers WHERE heartbeat + lease_s < ?", (now - 600,))
        return [r["id"] for r in rows]

    def claim(self, worker: str, pid: int | None = None, lease_s: float = LEASE_S,
              ids: Iterable[str] | None = None) -> Job | None:
        """Atomically take the first queued job (of `ids`, if given) and mark it running under a fresh lease;
        None when there is none or the queue is paused."""
        now = time.time()
        with self._tx() as conn:
            self._reap(conn, now)
            if conn.execute("SELECT 1 FROM meta WHERE key='paused'").fetchone() is not None:
                return None
            sql, args = "SELECT id FROM jobs WHERE status='queued'", []
            if ids is not None:
                ids = list(ids)
                if not ids:
                    return None
                sql += f" AND id IN ({','.join('?' * len(ids))})"
                args += ids
            row = conn.execute(sql + " ORDER BY priority, submitted_at, id LIMIT 1", args).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status='running', lease=?, worker=?, worker_pid=?, lease_s=?, heartbeat=?, "
                "started_at=?, updated_at=?, attempts=attempts+1, progress=0, message='starting', "
                "cancel_requested_at=NULL WHERE id=?",
                (uuid.uuid4().hex, worker, pid, lease_s, now, now, now, row["id"]))
            job = _job(conn.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone())
        return job

    def heartbeat(self, job_id: str, lease: str, progress: float | None = None,
                  message: str | None = None) -> tuple[str, float | None, float | None] | None:
        """Renew a lease (and record progress); returns (status, cancel_requested_at, cancel_grace_s), or None
        when the lease is no longer this worker's."""
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE jobs SET heartbeat=?, updated_at=?, progress=COALESCE(?, progress), "
                "message=COALESCE(?, message) WHERE id=? AND lease=? AND status IN ('running', 'cancelling') "
                "RETURNING status, cancel_requested_at, cancel_grace_s",
                (now, now, progress, message, job_id, lease)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def _finish(self, job_id: str, lease: str, status: str, **fields: Any) -> bool:
        now = time.time()
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET status=?, lease=NULL, finished_at=?, updated_at=?{', ' if sets else ''}{sets} "
                "WHERE id=? AND lease=? AND status IN ('running', 'cancelling')",
                (status, now, now, *fields.values(), job_id, lease))
            return cur.rowcount == 1

    def complete(self, job_id: str, lease: str, result: dict | None = None, message: str = "done") -> bool:
        """Mark a claimed job done; False when the lease was lost meanwhile."""
        return self._finish(job_id, lease, "done", progress=1.0, message=message, error=None, traceback=None,
                            result=json.dumps(result) if result is not None else None)

    def fail(self, job_id: str, lease: str, error: str, tb: str | None = None) -> bool:
        return self._finish(job_id, lease, "failed", message="failed", error=error, traceback=tb)

    def mark_cancelled(self, job_id: str, lease: str, message: str = "cancelled") -> bool:
        return self._finish(job_id, lease, "cancelled", message=message)

    def release(self, job_id: str, lease: str, message: str = "queued again: its worker stopped") -> bool:
        """Give a claimed job back to the queue (the worker is shutting down); the attempt is not counted."""
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status=CASE status WHEN 'cancelling' THEN 'cancelled' ELSE 'queued' END, "
                "lease=NULL, attempts=MAX(attempts-1, 0), updated_at=?, message=? "
                "WHERE id=? AND lease=? AND status IN ('running', 'cancelling')", (now, message, job_id, lease))
            return cur.rowcount == 1

    def still_holds(self, job_id: str, lease: str) -> bool:
        with self._connect() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id=? AND lease=?", (job_id, lease)).fetchone()
        return row is not None and row[0] == "running"

    # -- cancel and retry ------------------------------------------------------------------------------------

    def cancel(self, job_id: str, grace_s: float = CANCEL_GRACE_S) -> str:
        """Cancel a job: a queued one at once; a running one is asked to stop (its worker kills itself after
        `grace_s` if it has not). Returns the new status; a finished job is left as it is."""
        now = time.time()
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise UserError(f"no job {job_id!r}")
            status = row[0]
            if status == "queued":
                conn.execute("UPDATE jobs SET status='cancelled', finished_at=?, updated_at=?, message='cancelled' "
                             "WHERE id=?", (now, now, job_id))
                return "cancelled"
            if status == "running":
                conn.execute("UPDATE jobs SET status='cancelling', cancel_requested_at=?, cancel_grace_s=?, "
                             "updated_at=?, message='cancelling' WHERE id=?", (now, grace_s, now, job_id))
                return "cancelling"
            return status

    def retry(self, job_id: str) -> str:
        """Queue a failed or cancelled job again (its last error is kept until the new attempt ends)."""
        now = time.time()
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise UserError(f"no job {job_id!r}")
            if row[0] not in ("failed", "cancelled"):
                raise UserError(f"job {job_id} is {row[0]}: only failed or cancelled jobs can be retried")
            conn.execute("UPDATE jobs SET status='queued', progress=0, attempts=0, message='queued again (retry)', "
                         "finished_at=NULL, started_at=NULL, lease=NULL, cancel_requested_at=NULL, updated_at=? "
                         "WHERE id=?", (now, job_id))
        return "queued"

    def delete_finished(self) -> int:
        with self._tx() as conn:
            return conn.execute("DELETE FROM jobs WHERE status IN ('done', 'cancelled')").rowcount

    # -- workers ---------------------------------------------------------------------------------------------

    def worker_beat(self, worker: str, pid: int, lease_s: float, job_id: str | None, started_at: float) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO workers (id, host, pid, started_at, heartbeat, lease_s, job_id) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", (worker, _host(), pid, started_at, time.time(), lease_s,
                                                          job_id))

    def worker_gone(self, worker: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM workers WHERE id=?", (worker,))

    def live_workers(self) -> list[dict]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM workers WHERE heartbeat + lease_s >= ?", (time.time(),)).fetchall()
        return [dict(r) for r in rows]

    # -- pause -----------------------------------------------------------------------------------------------

    def pause(self, reason: str = "paused") -> None:
        """Stop handing out jobs (running ones go on; queued ones stay queued) until `resume`: workers idle, and
        nothing starts a worker on its own (the dashboard does when jobs wait and no worker is alive)."""
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('paused', ?)", (reason or "paused",))

    def resume(self) -> bool:
        """Hand out jobs again; True when the queue was paused."""
        with self._tx() as conn:
            return conn.execute("DELETE FROM meta WHERE key='paused'").rowcount == 1

    def paused(self) -> str | None:
        """Why the queue is paused, or None when it is not."""
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='paused'").fetchone()
        return None if row is None else str(row[0])

    def claim_spawn(self, guard_s: float = WORKER_SPAWN_GUARD_S) -> bool:
        """True for the one caller that may start a worker now: none is alive and none was started within
        `guard_s` seconds (two dashboard sessions pressing the button start one worker)."""
        now = time.time()
        with self._tx() as conn:
            alive = conn.execute("SELECT 1 FROM workers WHERE heartbeat + lease_s >= ? LIMIT 1", (now,)).fetchone()
            row = conn.execute("SELECT value FROM meta WHERE key='spawned_at'").fetchone()
            if alive or (row is not None and now - float(row[0]) < guard_s):
                return False
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('spawned_at', ?)", (str(now),))
            return True


# -- running one job ---------------------------------------------------------------------------------------


Progress = Callable[[float, str], None]
_DATA_CACHE: dict[tuple, Any] = {}
_DATA_LOCK = threading.Lock()


@contextlib.contextmanager
def file_lock(path: Path, waiting: Callable[[], None] | None = None, poll_s: float = 0.5) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the block; the kernel releases it if the holder dies.
    `waiting` is called while another holder keeps it (a progress callback may raise to give up)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waiting:
                    waiting()
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_job_data(spec: JobSpec, cache: Path):  # noqa: ANN201 - ImageData, imported lazily
    """The dataset a spec was planned on, cut to its profile; cached per process. A data path missing on this
    machine falls back to $COINFER_DATA and cache/data/ (a Dask worker elsewhere), and the fingerprint check
    catches a different dataset."""
    from engine.config import PROFILES
    from engine.data import load_data, subset

    path = spec.data if spec.data and Path(spec.data).exists() else None
    profile = PROFILES.get(spec.profile)
    key = (path, os.environ.get("COINFER_DATA"), str(cache), spec.profile, spec.seed)
    with _DATA_LOCK:
        if key not in _DATA_CACHE:
            data = load_data(path, cache_dir=cache, download=False)
            if profile.train_limit or profile.test_limit:
                data = subset(data, profile.train_limit, profile.test_limit, seed=spec.seed)
            _DATA_CACHE.clear()  # one dataset at a time: they are large
            _DATA_CACHE[key] = data
        data = _DATA_CACHE[key]
    expected = spec.base.get("dataset")
    if expected and data.fingerprint != expected:
        raise UserError(f"the dataset found here ({data.fingerprint}) is not the one this job was planned on "
                        f"({expected}): point --data or COINFER_DATA at the same data")
    return data


def execute(spec: JobSpec, progress: Progress | None = None, cache: Path | None = None) -> dict | None:
    """Run one job here and return its results row (None for a data job): the code path of local workers and
    Dask tasks alike, so both produce the same row for the same spec."""
    from engine.config import PROFILES
    from engine.methods import METHODS, RunContext

    cache = cache_dir() if cache is None else cache
    if spec.kind == "data":
        from engine.data import load_data

        if progress:
            progress(0.0, "locating the dataset (downloading CIFAR-10 if needed)")
        data = load_data(spec.data, cache_dir=cache, download=True)
        if progress:
            progress(1.0, f"{data.name}: {len(data.train_y)} / {len(data.test_y)} images")
        return None
    method = METHODS.get(spec.method)
    cfg = spec.variant()
    report = progress or (lambda fraction, message: None)
    report(0.0, "loading data")
    data = load_job_data(spec, cache)
    from engine.train import base_checkpoint_path

    ckpt = base_checkpoint_path(cfg.base, cache)
    split_at = 0.0 if ckpt.exists() else BASE_SHARE
    ctx = RunContext(data, PROFILES.get(spec.profile), cache,
                     progress=lambda f, m: report(split_at * f, f"base model: {m}"))
    with file_lock(ckpt.with_suffix(".lock"), lambda: report(0.0, f"waiting for base model {cfg.base.id}")):
        ctx.base(cfg.base)  # one trainer per base model; the others wait, then load it
    report(split_at, "measuring")
    ctx.progress = lambda f, m: report(split_at + (1.0 - split_at) * f, m)
    return method.run(cfg, ctx)


def result_summary(row: dict | None) -> dict | None:
    """The few figures of a row shown beside its job."""
    if row is None:
        return None
    keys = ("accuracy", "bits_actual", "bits_ideal", "device_flops", "device_memory_bytes")
    return {k: row[k] for k in keys if k in row and isinstance(row[k], (int, float))}


def one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:400]
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"


@dataclass
class WorkerOptions:
    """How a worker behaves: heartbeat period, lease, polling, when to exit, whether it may SIGKILL itself."""

    store_path: str | None = None
    heartbeat_s: float = HEARTBEAT_S
    lease_s: float = LEASE_S
    poll_s: float = 1.0
    idle_exit_s: float | None = None  # exit after this long without a job (None: never); one lease at least while
    # jobs run, so that a dead worker's job is taken over
    max_jobs: int | None = None
    ids: tuple[str, ...] | None = None  # only these jobs
    threads: int | None = None  # torch threads
    hard_kill: bool = False  # SIGKILL itself when a cancel is not honoured in time (worker processes only)
    log_path: str | None = None  # also log here; "{pid}" is replaced by the worker's pid
    console_level: int = logging.INFO


class _Current:
    """The job a worker is running: its lease, the latest progress, and the flags the heartbeat sets."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.progress = 0.0
        self.message = "starting"
        self.cancel = False
        self.lost = False

    def __call__(self, fraction: float, message: str) -> None:
        if self.cancel:
            raise JobCancelled(self.job.id)
        if self.lost:
            raise JobLost(self.job.id)
        self.progress = min(max(float(fraction), 0.0), 1.0)
        self.message = message


class Worker:
    """Takes jobs from the queue and runs them in this process, one at a time; a thread heart-beats."""

    def __init__(self, queue: JobQueue, options: WorkerOptions | None = None) -> None:
        from engine.store import ResultsStore

        self.queue = queue
        self.options = options or WorkerOptions()
        self.store = ResultsStore(self.options.store_path)
        self.pid = os.getpid()
        self.name = f"{_host()}:{self.pid}:{uuid.uuid4().hex[:6]}"
        self.started_at = time.time()
        self.current: _Current | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._beat_thread: threading.Thread | None = None

    # -- heartbeat ---------------------------------------------------------------------------------------

    def _beat(self) -> None:
        with self._lock:
            cur = self.current
        self.queue.worker_beat(self.name, self.pid, self.options.lease_s, cur.job.id if cur else None,
                               self.started_at)
        if cur is None:
            return
        state = self.queue.heartbeat(cur.job.id, cur.job.lease or "", cur.progress, cur.message)
        if state is None:
            cur.lost = True
            return
        status, asked_at, grace = state
        if status == "cancelling":
            cur.cancel = True
            if self.options.hard_kill and asked_at is not None and time.time() - asked_at > (grace or 0.0):
                self.queue.mark_cancelled(cur.job.id, cur.job.lease or "",
                                          f"cancelled: killed after a {grace:g} s grace period")
                log.warning("job %s ignored its cancel for %g s: killing this worker (pid %d)", cur.job.id, grace,
                            self.pid)
                os.kill(self.pid, signal.SIGKILL)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.options.heartbeat_s):
            try:
                self._beat()
            except Exception as exc:  # noqa: BLE001 - a busy database must not kill the heartbeat
                log.warning("heartbeat failed: %s", one_line(exc))

    def start(self) -> None:
        if self._beat_thread is None:
            self.queue.worker_beat(self.name, self.pid, self.options.lease_s, None, self.started_at)
            self._beat_thread = threading.Thread(target=self._beat_loop, name="coinfer-heartbeat", daemon=True)
            self._beat_thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(timeout=5)
            self._beat_thread = None
        with contextlib.suppress(Exception):
            self.queue.worker_gone(self.name)

    # -- jobs ----------------------------------------------------------------------------------------------

    def run_one(self, job: Job) -> str:
        """Run a claimed job to its end; returns its final status."""
        lease = job.lease or ""
        cur = _Current(job)
        with self._lock:
            self.current = cur
        start = time.perf_counter()
        log.info("job %s: attempt %d", job.describe(), job.attempts)
        try:
            row = execute(job.spec, cur)
            if row is not None and not self.queue.still_holds(job.id, lease):
                raise JobLost(job.id)
            if row is not None:
                self.store.put(row)
            ok = self.queue.complete(job.id, lease, result_summary(row),
                                     f"done in {time.perf_counter() - start:.1f} s")
            status = "done" if ok else "lost"
        except JobCancelled:
            self.queue.mark_cancelled(job.id, lease)
            status = "cancelled"
        except JobLost:
            log.warning("job %s: another worker holds it now; dropping this attempt", job.id)
            status = "lost"
        except (KeyboardInterrupt, SystemExit):
            self.queue.release(job.id, lease)
            raise
        except Exception as exc:  # noqa: BLE001 - the job fails, the worker goes on
            self.queue.fail(job.id, lease, one_line(exc), traceback.format_exc())
            log.error("job %s failed: %s", job.id, one_line(exc))
            status = "failed"
        finally:
            with self._lock:
                self.current = None
        log.info("job %s: %s", job.id, status)
        return status

    def work(self, stop: threading.Event | Any | None = None, parent_pid: int | None = None) -> int:
        """Claim and run jobs until `stop` is set, the idle timeout passes, `max_jobs` ran, or the parent
        process is gone; returns the number of jobs run."""
        opts = self.options
        self.start()
        ran, idle_since = 0, time.monotonic()
        try:
            while not (stop is not None and stop.is_set()):
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.info("worker %s: parent gone, exiting", self.name)
                    break
                job = self.queue.claim(self.name, self.pid, opts.lease_s, opts.ids)
                if job is None:
                    idle = time.monotonic() - idle_since
                    # while jobs run, idle for one lease at least: a job whose worker died is claimable only once
                    # its lease expires (the queue is asked only after the idle time has passed)
                    if (opts.idle_exit_s is not None and idle > opts.idle_exit_s
                            and (idle > opts.lease_s or not self.queue.jobs(status="running"))):
                        break
                    if stop is not None:
                        stop.wait(opts.poll_s)
                    else:
                        time.sleep(opts.poll_s)
                    continue
                self.run_one(job)
                ran += 1
                idle_since = time.monotonic()
                if opts.max_jobs is not None and ran >= opts.max_jobs:
                    break
        finally:
            self.close()
        return ran


def _setup_process(options: WorkerOptions) -> None:
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(options.console_level)
    handlers: list[logging.Handler] = [console]
    if options.log_path:
        path = Path(options.log_path.replace("{pid}", str(os.getpid())))
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{os.getpid()}] %(levelname)s %(message)s",
                        handlers=handlers, force=True)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)


def interrupt_on_terminate() -> None:
    """Make SIGTERM interrupt like Ctrl-C (and restore Ctrl-C where a background shell had it ignored): a stopped
    sweep then shuts its workers down, and a stopped worker gives its job back to the queue at once, instead of
    leaving it to the lease's expiry. Call it from the main thread."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def worker_main(queue_path: str, options: WorkerOptions, stop: Any = None, parent_pid: int | None = None) -> None:
    """Entry point of a worker process (multiprocessing, spawn start method)."""
    interrupt_on_terminate()
    _setup_process(options)
    try:
        Worker(JobQueue(queue_path), options).work(stop, parent_pid)
    except KeyboardInterrupt as exc:  # its job, if any, is back in the queue
        log.info("worker %s stopped (%s)", os.getpid(), exc or "interrupted")


def start_worker_process(queue_path: Path | str, options: WorkerOptions, stop: Any = None,
                         ctx: Any = None) -> multiprocessing.process.BaseProcess:
    """A worker in a fresh interpreter (spawn: no forked torch threads or SQLite handles)."""
    ctx = ctx or multiprocessing.get_context("spawn")
    proc = ctx.Process(target=worker_main, args=(str(queue_path), options, stop, os.getpid()),
                       name="coinfer-worker", daemon=False)
    proc.start()
    return proc


class WorkerPool:
    """N worker processes kept alive while there is work: a worker that dies (killed after ignoring a cancel,
    out of memory) is replaced. `until()` returning True stops the pool."""

    def __init__(self, queue: JobQueue, n: int, options: WorkerOptions) -> None:
        if n < 1:
            raise UserError(f"the number of workers must be at least 1, got {n}")
        self.queue, self.n, self.options = queue, n, options
        self.ctx = multiprocessing.get_context("spawn")
        self.stop = self.ctx.Event()
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.options = dataclasses.replace(options, hard_kill=True,
                                           threads=options.threads or max(1, (os.cpu_count() or 1) // n))
        self._failed: list[int] = []  # exit statuses of the workers that ended in error since a job last moved
        self._jobs_seen: object = None

    def _claimable(self) -> bool:
        ids = list(self.options.ids) if self.options.ids is not None else None
        return bool(self.queue.jobs(ids, status="queued"))

    def _busy(self) -> bool:
        ids = list(self.options.ids) if self.options.ids is not None else None
        return bool(self.queue.jobs(ids, status=ACTIVE))

    def _jobs_state(self) -> object:
        ids = list(self.options.ids) if self.options.ids is not None else None
        return sorted((j.id, j.status, j.attempts) for j in self.queue.jobs(ids))

    def poll(self, keep_alive: bool = False) -> None:
        """Reap ended processes; start new ones while jobs wait (or always, with `keep_alive`). Raises UserError when
        `FAILED_STARTS` workers per slot have ended in error with no job claimed or finished meanwhile (a worker that
        cannot start: replacing it would loop for ever)."""
        alive, failed = [], []
        for p in self.procs:
            if p.is_alive():
                alive.append(p)
                continue
            p.join()
            if p.exitcode not in (0, None):
                log.warning("worker pid %s ended with status %s", p.pid, p.exitcode)
                failed.append(p.exitcode)
        self.procs = alive
        if failed:
            state = self._jobs_state()
            self._failed = [*self._failed, *failed] if state == self._jobs_seen else failed
            self._jobs_seen = state
            if len(self._failed) >= FAILED_STARTS * self.n:
                raise UserError(f"{len(self._failed)} local workers in a row ended with an error before taking a job "
                                f"(last exit status {self._failed[-1]}); the jobs stay queued: run `python -m engine "
                                "worker` in a terminal to see why")
        if len(self.procs) < self.n and (keep_alive or self._claimable() or (not self.procs and self._busy())):
            for _ in range(self.n - len(self.procs)):
                self.procs.append(start_worker_process(self.queue.path, self.options, self.stop, self.ctx))

    def run(self, until: Callable[[], bool] | None = None, interval: float = 1.0, keep_alive: bool = False) -> None:
        """Keep the pool up until `until()` returns True, or, without `until`, until every worker has exited on
        its own (idle timeout) with no job left queued or running; `keep_alive` replaces exited workers."""
        try:
            self.poll(keep_alive=True)
            while True:
                if until is not None and until():
                    break
                time.sleep(interval)
                self.poll(keep_alive)
                if until is None and not keep_alive and not self.procs and not self._busy():
                    break
        finally:
            self.shutdown()

    def shutdown(self, timeout: float = 30.0, idle_s: float = 2.0) -> None:
        """Stop the workers: idle ones exit at once; one still in a job after `idle_s` gets SIGTERM, gives its job
        back to the queue (resumable from its checkpoint) and exits; one that has not after `timeout` is killed."""
        self.stop.set()
        deadline = time.monotonic() + idle_s
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        self.procs = []


# -- the dashboard's detached worker -------------------------------------------------------------------------


def worker_log_dir() -> Path:
    return cache_dir() / "jobs"


def ensure_worker(queue: JobQueue, idle_exit_s: float = 300.0) -> int | None:
    """Start a detached `python -m engine worker` unless one is alive (or was just started) or the queue is paused;
    returns its pid."""
    if queue.paused() is not None or not queue.claim_spawn():
        return None
    log_dir = worker_log_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{time.strftime('%Y%m%d-%H%M%S')}.log"
    env = {**os.environ, "COINFER_CACHE": str(cache_dir())}
    argv = [sys.executable, "-m", "engine", "worker", "--idle-exit", f"{idle_exit_s:g}"]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    threading.Thread(target=proc.wait, name="coinfer-reap-worker", daemon=True).start()  # no zombie
    return proc.pid


def wait_for(queue: JobQueue, ids: list[str], on_update: Callable[[list[Job]], None] | None = None,
             poll_s: float = 1.0, timeout_s: float | None = None) -> list[Job]:
    """Poll until every job of `ids` is finished; returns them."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        jobs = queue.jobs(ids)
        if on_update:
            on_update(jobs)
        if all(j.finished for j in jobs):
            return jobs
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"jobs still active after {timeout_s} s")
        time.sleep(poll_s)
