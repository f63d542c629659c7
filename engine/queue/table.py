"""The job table: one SQLite row per job (keyed by its variant id) under cache/, and a table of live workers.

A job's life: queued -> running -> done | failed | cancelled (cancelling in between when asked to stop). Claims are
atomic (`BEGIN IMMEDIATE`), and every claim carries a lease token: a worker updates its job only while it holds the
lease. A job whose worker stops heart-beating goes back to the queue when its lease expires (`JobQueue.reap`), and
the next claim runs it again. Rows are written whole and keyed by id, so a job run twice leaves one row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import sqlite
from engine.errors import UserError
from engine.paths import cache_dir
from engine.queue.spec import JobSpec

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed", "cancelling", "cancelled")
ACTIVE = ("queued", "running", "cancelling")
FINISHED = ("done", "failed", "cancelled")
LEASE_S = 60.0  # a running job whose worker has not heart-beaten for this long goes back to the queue
CANCEL_GRACE_S = 15.0
MAX_ATTEMPTS = 3
WORKER_SPAWN_GUARD_S = 20.0  # two dashboards asking for a worker within this window start one
CLAIM_WINDOW = 64  # queued jobs a claim looks through for one that shares nothing with a running job

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
    result TEXT,
    tag TEXT,
    reports TEXT
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
# Columns added after job tables were created: (name, type), added to an older table when it is opened
_ADDED_COLUMNS = (("tag", "TEXT"), ("reports", "TEXT"))



def default_path() -> Path:
    return cache_dir() / "jobs.sqlite"


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
    tag: str | None = None  # who submitted it for its own workers (a search's study); None: any worker
    reports: dict[str, dict[str, float]] | None = None  # figures reported while it runs (`Lease.record`)

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
    values = {k: row[k] for k in _JOB_FIELDS if k not in ("spec", "result", "reports")}
    return Job(spec=JobSpec.from_json(row["spec"]), result=json.loads(row["result"]) if row["result"] else None,
               reports=json.loads(row["reports"]) if row["reports"] else None,
               **values)


def _free_of(conn: sqlite3.Connection, queued: list[sqlite3.Row],
             shares: Callable[[JobSpec], str | None]) -> sqlite3.Row:
    """The first of `queued` (rows with id and spec, in line) that shares nothing with a running job; the first
    when each does."""
    running = conn.execute("SELECT spec FROM jobs WHERE status IN ('running', 'cancelling')").fetchall()
    busy = {shares(JobSpec.from_json(r["spec"])) for r in running} - {None}
    if not busy:
        return queued[0]
    return next((r for r in queued if shares(JobSpec.from_json(r["spec"])) not in busy), queued[0])


def _host() -> str:
    return socket.gethostname()


class JobQueue:
    """The SQLite job table (WAL mode, one `BEGIN IMMEDIATE` transaction per change: safe across processes).

    Args:
        path: the database file (default: cache/jobs.sqlite); created with its directory if missing.

    Raises:
        UserError: the file cannot be created or is not a job queue.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                sqlite.create(conn, _DDL)
                sqlite.add_columns(conn, "jobs", _ADDED_COLUMNS)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open the job queue {self.path} ({exc}): set COINFER_CACHE to a writable "
                            "directory, or move a damaged file away") from None

    def __repr__(self) -> str:
        return f"JobQueue({str(self.path)!r})"

    def _connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return sqlite.connect(self.path, rows=True)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: the write lock is taken at once, so read-then-write steps are atomic."""
        with self._connect() as conn, sqlite.transaction(conn):
            yield conn

    # -- submitting ------------------------------------------------------------------------------------------

    def submit(self, specs: Iterable[JobSpec], priority: int | Iterable[int] = 0, *,
               requeue_finished: bool = False, max_attempts: int = MAX_ATTEMPTS, tag: str | None = None) -> list[str]:
        """Queue each spec once, keyed by its id; a job already queued or running is left alone, so two sessions
        submitting the same variant queue it once.

        Args:
            specs: the jobs.
            priority: one for all, or one per spec; lower runs first.
            requeue_finished: queue done/failed/cancelled jobs of these ids again (a sweep does this for variants
                missing from the results store).
            max_attempts: claims of a job before an expired lease fails it.
            tag: for the workers claiming this tag (a search's study, `claim(tag=...)`); a job of these ids still
                queued takes the tag too, so that the submitter's own workers run it.

        Returns:
            The job ids, in the order of `specs`.
        """
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
                    "max_attempts, submitted_at, updated_at, message, tag) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, 'queued', ?)",
                    (job_id, spec.kind, spec.method, spec.split, spec.profile, spec.base_id, spec.to_json(), prio,
                     max_attempts, now, now, tag))
                if requeue_finished:
                    conn.execute(
                        "UPDATE jobs SET status='queued', progress=0, message='queued again', attempts=0, priority=?, "
                        "submitted_at=?, updated_at=?, started_at=NULL, finished_at=NULL, lease=NULL, worker=NULL, "
                        "worker_pid=NULL, cancel_requested_at=NULL, reports=NULL, tag=? WHERE id=? AND status IN "
                        "('done', 'failed', 'cancelled')", (prio, now, now, tag, job_id))
                if tag is not None:
                    conn.execute("UPDATE jobs SET tag=? WHERE id=? AND status='queued'", (tag, job_id))
        return ids

    # -- reading ---------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """The job `job_id`, or None."""
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
             base_id: str | None = None, method: str | None = None, tag: str | None = None,
             reap: bool = True) -> list[Job]:
        """The jobs of `ids`, in `status` (one or several), on `base_id`, of `method`, with `tag` (each None: any),
        in claim order (priority, then submission); with `reap`, expired leases are returned to the queue first."""
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
        if tag is not None:
            where.append("tag = ?")
            args.append(tag)
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
              ids: Iterable[str] | None = None, tag: str | None = None,
              shares: Callable[[JobSpec], str | None] | None = None) -> Job | None:
        """Atomically take the first queued job and mark it running under a fresh lease.

        Args:
            worker: the claimant's name, shown with the job.
            pid: its process id.
            lease_s: the lease lasts this long without a heartbeat.
            ids: only claim one of these jobs.
            tag: only claim a job submitted with this tag (None: any job).
            shares: what a job shares with others (a pruning run it trains or reads; None: nothing): a queued job
                that shares with a running one is passed over for the next that does not, among the first
                `CLAIM_WINDOW` in line (it would only wait on the other's lock); taken when all of them do.

        Returns:
            The claimed job (its `lease` is the token for later updates), or None when none is queued or the
            queue is paused.
        """
        now = time.time()
        with self._tx() as conn:
            self._reap(conn, now)
            if conn.execute("SELECT 1 FROM meta WHERE key='paused'").fetchone() is not None:
                return None
            sql, args = "SELECT id, spec FROM jobs WHERE status='queued'", []
            if ids is not None:
                ids = list(ids)
                if not ids:
                    return None
                sql += f" AND id IN ({','.join('?' * len(ids))})"
                args += ids
            if tag is not None:
                sql += " AND tag = ?"
                args.append(tag)
            rows = conn.execute(sql + " ORDER BY priority, submitted_at, id LIMIT ?",
                                [*args, CLAIM_WINDOW if shares is not None else 1]).fetchall()
            if not rows:
                return None
            row = rows[0] if shares is None or len(rows) == 1 else _free_of(conn, rows, shares)
            conn.execute(
                "UPDATE jobs SET status='running', lease=?, worker=?, worker_pid=?, lease_s=?, heartbeat=?, "
                "started_at=?, updated_at=?, attempts=attempts+1, progress=0, message='starting', "
                "cancel_requested_at=NULL, reports=NULL WHERE id=?",
                (uuid.uuid4().hex, worker, pid, lease_s, now, now, now, row["id"]))
            job = _job(conn.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone())
        return job

    def heartbeat(self, job_id: str, lease: str, progress: float | None = None, message: str | None = None,
                  reports: Mapping[str, Mapping[str, float]] | None = None
                  ) -> tuple[str, float | None, float | None] | None:
        """Renew a lease and record progress.

        Args:
            job_id: the job.
            lease: the token its claim returned.
            progress: fraction done (None: unchanged).
            message: what it is doing (None: unchanged).
            reports: every figure the job reported so far, by kind and step (None: unchanged).

        Returns:
            (status, cancel_requested_at, cancel_grace_s), or None when the lease is no longer the caller's.
        """
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE jobs SET heartbeat=?, updated_at=?, progress=COALESCE(?, progress), "
                "message=COALESCE(?, message), reports=COALESCE(?, reports) WHERE id=? AND lease=? AND status IN "
                "('running', 'cancelling') RETURNING status, cancel_requested_at, cancel_grace_s",
                (now, now, progress, message, json.dumps(reports, sort_keys=True) if reports else None, job_id,
                 lease)).fetchone()
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

    def complete(self, job_id: str, lease: str, result: dict | None = None, message: str = "done",
                 reports: Mapping[str, Mapping[str, float]] | None = None) -> bool:
        """Mark a claimed job done with the figures of its row (`result_summary`) and, when given, every figure it
        reported as it ran; False when the lease was lost meanwhile (nothing changed)."""
        extra = {"reports": json.dumps(reports, sort_keys=True)} if reports else {}
        return self._finish(job_id, lease, "done", progress=1.0, message=message, error=None, traceback=None,
                            result=json.dumps(result) if result is not None else None, **extra)

    def fail(self, job_id: str, lease: str, error: str, tb: str | None = None) -> bool:
        """Mark a claimed job failed with its error and traceback; False when the lease was lost meanwhile."""
        return self._finish(job_id, lease, "failed", message="failed", error=error, traceback=tb)

    def mark_cancelled(self, job_id: str, lease: str, message: str = "cancelled") -> bool:
        """Mark a claimed job cancelled; False when the lease was lost meanwhile."""
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

    def holding(self, job_id: str, lease: str) -> str | None:
        """The job's status while `lease` is still its own ("running", or "cancelling": a cancel was asked), None
        once another worker holds it or it has ended (checked before a finished job's row is written)."""
        with self._connect() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id=? AND lease=? AND status IN ('running', "
                               "'cancelling')", (job_id, lease)).fetchone()
        return None if row is None else str(row[0])

    # -- cancel and retry ------------------------------------------------------------------------------------

    def cancel(self, job_id: str, grace_s: float = CANCEL_GRACE_S) -> str:
        """Cancel a job: a queued one at once; a running one is asked to stop. A finished job is left as it is.

        Args:
            job_id: the job.
            grace_s: a worker that has not stopped after this long kills itself.

        Returns:
            The job's status now.
        """
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

    # -- crossing as rows arrive ---------------------------------------------------------------------------

    def follow(self, base_id: str, plan: Mapping[str, Any] | None) -> None:
        """Remember (or, with None, forget) that the sweep of `base_id` plans follow-ups as its rows arrive, with
        `plan` (profile, data, methods) for whoever plans the next round (`engine.sweep.next_round`)."""
        with self._tx() as conn:
            if plan is None:
                conn.execute("DELETE FROM meta WHERE key=?", (f"follow:{base_id}",))
            else:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             (f"follow:{base_id}", json.dumps(dict(plan), sort_keys=True)))

    def following(self, base_id: str) -> dict[str, Any] | None:
        """The follow-up plan remembered for `base_id` (`follow`), or None."""
        with self._connect() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key=?", (f"follow:{base_id}",)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

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

