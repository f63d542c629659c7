"""Leases held by this process, and the one heartbeat that renews them.

A claim gives a job's lease to its claimant (`JobQueue.claim`); the claimant keeps it by heart-beating
(`JobQueue.heartbeat`) at least once per lease period. `Heartbeat` is the daemon thread that does so for every
`Lease` it holds, local worker and Dask executor alike: it records the latest progress with each beat, notes a
cancel request or a lost lease on the `Lease`, and tells its owner through `on_cancel`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from engine.errors import one_line
from engine.queue.table import Job, JobQueue

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0


class JobCancelled(BaseException):  # noqa: N818 - like KeyboardInterrupt, a method's `except Exception` can't eat it
    """Raised inside a job's progress callback once the job is marked cancelling."""


class JobLost(BaseException):  # noqa: N818
    """Raised inside a job's progress callback when another worker holds its lease (this one was presumed dead)."""


class Lease:
    """A claimed job held by this process: its lease token, the latest progress to report, and what the heartbeat
    learnt (a cancel request, a lost lease). Called as a progress callback, it records the progress and raises
    `JobCancelled` or `JobLost` once the heartbeat has set those flags."""

    def __init__(self, job: Job, progress: float | None = 0.0, message: str | None = "starting") -> None:
        self.job = job
        self.progress = progress  # None: leave the job's progress as it is
        self.message = message
        self.cancel = False
        self.lost = False
        self.cancel_requested_at: float | None = None
        self.cancel_grace_s: float | None = None
        self.reports: dict[str, dict[str, float]] = {}  # figures reported so far (`record`), sent with each beat
        self._reports_lock = threading.Lock()

    @property
    def token(self) -> str:
        return self.job.lease or ""

    def report(self, fraction: float, message: str) -> None:
        """Record progress for the next heartbeat."""
        self.progress = min(max(float(fraction), 0.0), 1.0)
        self.message = message

    def record(self, kind: str, step: int, value: float) -> None:
        """Record a figure the job reports as it runs (`engine.intermediate.report`) for the next heartbeat."""
        with self._reports_lock:
            self.reports.setdefault(str(kind), {})[str(int(step))] = float(value)

    def reports_now(self) -> dict[str, dict[str, float]]:
        """A copy of the figures recorded so far."""
        with self._reports_lock:
            return {k: dict(v) for k, v in self.reports.items()}

    def __call__(self, fraction: float, message: str) -> None:
        if self.cancel:
            raise JobCancelled(self.job.id)
        if self.lost:
            raise JobLost(self.job.id)
        self.report(fraction, message)


class Heartbeat:
    """A daemon thread renewing the leases this process holds, every `period_s` seconds.

    Args:
        queue: the job table.
        period_s: seconds between beats (well under the lease period).
        before: called first in each beat (a worker records itself in the table of live workers); if it raises,
            the beat is skipped.
        on_cancel: called with a lease whose job is cancelling, at every beat until it is dropped.
        name: the thread's name.
    """

    def __init__(self, queue: JobQueue, period_s: float = HEARTBEAT_S, *, before: Callable[[], None] | None = None,
                 on_cancel: Callable[[Lease], None] | None = None, name: str = "coinfer-heartbeat") -> None:
        self.queue = queue
        self.period_s = period_s
        self.before = before
        self.on_cancel = on_cancel
        self.name = name
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, lease: Lease) -> None:
        """Renew `lease` from the next beat on."""
        with self._lock:
            self._held[lease.job.id] = lease

    def drop(self, job_id: str) -> Lease | None:
        """Stop renewing the lease of `job_id` (its job finished or was given back); returns it."""
        with self._lock:
            return self._held.pop(job_id, None)

    def lease(self, job_id: str) -> Lease | None:
        """The held lease of `job_id`, or None."""
        with self._lock:
            return self._held.get(job_id)

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._held.values())

    def beat(self) -> None:
        """One beat: `before`, then renew each held lease, noting a cancel request or a lost lease."""
        if self.before is not None:
            try:
                self.before()
            except Exception as exc:  # noqa: BLE001 - a busy database must not kill the heartbeat
                log.warning("heartbeat failed: %s", one_line(exc))
                return
        for lease in self.held():
            try:
                self._renew(lease)
            except Exception as exc:  # noqa: BLE001 - keep beating through a busy database
                log.warning("heartbeat failed: %s", one_line(exc))

    def _renew(self, lease: Lease) -> None:
        state = self.queue.heartbeat(lease.job.id, lease.token, lease.progress, lease.message,
                                     lease.reports_now() or None)
        if state is None:
            lease.lost = True
            return
        status, lease.cancel_requested_at, lease.cancel_grace_s = state
        if status == "cancelling":
            lease.cancel = True
            if self.on_cancel is not None:
                self.on_cancel(lease)

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.beat()

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, waiting up to `timeout` seconds for a beat in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
