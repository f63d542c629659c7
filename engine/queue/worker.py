"""A worker: takes jobs from the queue and runs them in this process, one at a time (`engine.queue.spec.execute`),
while a heartbeat thread (`engine.queue.lease.Heartbeat`) keeps its lease. Cancel is cooperative: the job's progress
callback raises `JobCancelled` once the job is cancelling; a worker allowed to (`hard_kill`, worker processes only)
kills itself with SIGKILL when its job ignores a cancel past the grace period, and its supervisor starts a fresh one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from engine.errors import UserError, one_line
from engine.queue.lease import HEARTBEAT_S, Heartbeat, JobCancelled, JobLost, Lease
from engine.queue.spec import JobSpec, execute, result_summary
from engine.queue.table import LEASE_S, Job, JobQueue

log = logging.getLogger(__name__)


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
    tag: str | None = None  # only jobs submitted with this tag (a search's study)
    threads: int | None = None  # torch threads
    hard_kill: bool = False  # SIGKILL itself when a cancel is not honoured in time (worker processes only)
    log_path: str | None = None  # also log here; "{pid}" is replaced by the worker's pid
    console_level: int = logging.INFO


def shared_part(spec: JobSpec) -> str | None:
    """What a variant job shares with others, by its method's `shared_part` (a `three_step` pruning run); None for
    other jobs, methods without one, and a spec this worker cannot read (running it reports why)."""
    if spec.kind != "variant":
        return None
    from engine.methods import METHODS

    try:
        part = getattr(METHODS.get(spec.method), "shared_part", None)
        return None if part is None else part(spec.variant(), spec.profile)
    except (UserError, KeyError, TypeError, ValueError):
        return None


class Worker:
    """Takes jobs from the queue and runs them in this process, one at a time; a thread heart-beats.

    Args:
        queue: the job table.
        options: how it behaves (default `WorkerOptions()`); `store_path` is where the rows go.
    """

    def __init__(self, queue: JobQueue, options: WorkerOptions | None = None) -> None:
        from engine.store import ResultsStore

        self.queue = queue
        self.options = options or WorkerOptions()
        self.store = ResultsStore(self.options.store_path)
        self.pid = os.getpid()
        self.name = f"{socket.gethostname()}:{self.pid}:{uuid.uuid4().hex[:6]}"
        self.started_at = time.time()
        self.heartbeat = Heartbeat(queue, self.options.heartbeat_s, before=self._beat_worker,
                                   on_cancel=self._on_cancel)
        self._started = False

    # -- heartbeat ---------------------------------------------------------------------------------------

    def _beat_worker(self) -> None:
        """Record this worker, and the job it runs, in the table of live workers."""
        held = self.heartbeat.held()
        self.queue.worker_beat(self.name, self.pid, self.options.lease_s, held[0].job.id if held else None,
                               self.started_at)

    def _on_cancel(self, lease: Lease) -> None:
        """A cancel ignored past its grace period kills this worker (with `hard_kill`)."""
        asked_at, grace = lease.cancel_requested_at, lease.cancel_grace_s
        if self.options.hard_kill and asked_at is not None and time.time() - asked_at > (grace or 0.0):
            self.queue.mark_cancelled(lease.job.id, lease.token, f"cancelled: killed after a {grace:g} s grace period")
            log.warning("job %s ignored its cancel for %g s: killing this worker (pid %d)", lease.job.id, grace,
                        self.pid)
            os.kill(self.pid, signal.SIGKILL)

    def start(self) -> None:
        """Record this worker in the table of live workers and start its heartbeat."""
        if not self._started:
            self._beat_worker()
            self.heartbeat.start()
            self._started = True

    def close(self) -> None:
        """Stop the heartbeat and leave the table of live workers."""
        self.heartbeat.stop()
        self._started = False
        with contextlib.suppress(Exception):
            self.queue.worker_gone(self.name)

    # -- jobs ----------------------------------------------------------------------------------------------

    def run_one(self, job: Job) -> str:
        """Run a claimed job to its end, writing its row to the results store.

        Args:
            job: a job this worker claimed (it holds the lease).

        Returns:
            Its final status: done, failed, cancelled, or lost (another worker took it over meanwhile).
        """
        lease = Lease(job)
        self.heartbeat.hold(lease)
        start = time.perf_counter()
        log.info("job %s: attempt %d", job.describe(), job.attempts)
        try:
            row = execute(job.spec, lease)
            if row is not None:
                held = self.queue.holding(job.id, lease.token)
                if held == "cancelling":  # asked to stop as it finished: the cancel stands, its row is not kept
                    raise JobCancelled(job.id)
                if held is None:
                    raise JobLost(job.id)
                self.store.put(row)
            ok = self.queue.complete(job.id, lease.token, result_summary(row),
                                     f"done in {time.perf_counter() - start:.1f} s", lease.reports_now())
            status = "done" if ok else "lost"
        except JobCancelled:
            self.queue.mark_cancelled(job.id, lease.token)
            status = "cancelled"
        except JobLost:
            log.warning("job %s: another worker holds it now; dropping this attempt", job.id)
            status = "lost"
        except (KeyboardInterrupt, SystemExit):
            self.queue.release(job.id, lease.token)
            raise
        except Exception as exc:  # noqa: BLE001 - the job fails, the worker goes on
            self.queue.fail(job.id, lease.token, one_line(exc), traceback.format_exc())
            log.error("job %s failed: %s", job.id, one_line(exc))
            status = "failed"
        finally:
            self.heartbeat.drop(job.id)
        log.info("job %s: %s", job.id, status)
        return status

    def _idle_done(self, idle_since: float, asked_at: float) -> bool:
        """Whether an idle worker may exit, given that the queue had no job for it when asked at `asked_at`: its
        idle timeout had passed by then, and, while jobs run, one lease at least (a job whose worker died becomes
        claimable once its lease expires, so only a claim made after a whole lease of idling proves there is none;
        a lease that expired after the claim still counts as running, not reaped here)."""
        opts = self.options
        idle = asked_at - idle_since
        return (opts.idle_exit_s is not None and idle > opts.idle_exit_s
                and (idle > opts.lease_s or not self.queue.jobs(status="running", reap=False)))

    def work(self, stop: threading.Event | Any | None = None, parent_pid: int | None = None) -> int:
        """Claim and run jobs until told to stop.

        Args:
            stop: an event; once set, the worker exits after its current job.
            parent_pid: exit when this process is no longer the parent (the supervisor died).

        Returns:
            The number of jobs run, once `stop` is set, the idle timeout passed, `max_jobs` ran, or the parent
            process is gone.
        """
        opts = self.options
        self.start()
        ran, idle_since = 0, time.monotonic()
        try:
            while not (stop is not None and stop.is_set()):
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.info("worker %s: parent gone, exiting", self.name)
                    break
                asked_at = time.monotonic()
                job = self.queue.claim(self.name, self.pid, opts.lease_s, opts.ids, opts.tag, shares=shared_part)
                if job is None:
                    if self._idle_done(idle_since, asked_at):
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
