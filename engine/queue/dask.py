"""The Dask executor: runs queued jobs on a Dask cluster. This process claims each job, holds its lease (one
`engine.queue.lease.Heartbeat` for all of them), sends the job to the cluster as a task that calls
`engine.queue.spec.execute` (the code path of local workers too), writes the returned row to the results store and
marks the job done. Progress comes back as Dask events; a cancel reaches a running task through a distributed Event.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from engine.errors import UserError, one_line
from engine.queue.lease import Heartbeat, Lease
from engine.queue.spec import JobSpec, execute, result_summary
from engine.queue.table import LEASE_S, Job, JobQueue

if TYPE_CHECKING:
    from engine.store import ResultsStore

log = logging.getLogger(__name__)

PROGRESS_TOPIC = "coinfer-progress"


def _cancel_event_name(job_id: str) -> str:
    return f"coinfer-cancel-{job_id}"


def dask_task(spec_json: str) -> dict | None:
    """A job on a Dask worker: `execute` with progress sent to the client as events and a cooperative cancel
    through a distributed Event. The data path of the spec, $COINFER_DATA or the worker's cache/data/ must hold
    the same dataset (its fingerprint is checked).

    Args:
        spec_json: the job's `JobSpec` as JSON.

    Returns:
        The results row, or None for a data job.
    """
    from distributed import Event, get_worker

    spec = JobSpec.from_json(spec_json)
    job_id = spec.id
    worker = get_worker()
    cancel = Event(_cancel_event_name(job_id))
    last = [0.0]

    class Progress:
        """Progress as events (at most one a second) and what the run reports (`engine.intermediate`), each sent."""

        def __call__(self, fraction: float, message: str) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0:
                last[0] = now
                worker.log_event(PROGRESS_TOPIC, {"id": job_id, "progress": fraction, "message": message,
                                                  "worker": worker.address})
                if cancel.is_set():
                    raise UserError("cancelled")

        def record(self, kind: str, step: int, value: float) -> None:
            worker.log_event(PROGRESS_TOPIC, {"id": job_id, "report": [kind, step, value]})

    return execute(spec, Progress())


class DaskExecutor:
    """Runs jobs of the queue on the cluster of a connected Dask client, holding their leases meanwhile.

    Args:
        queue: the job table.
        store: where the rows go.
        client: a `distributed.Client`.
        lease_s: the lease period of each claim.
        heartbeat_s: seconds between heartbeats.
    """

    def __init__(self, queue: JobQueue, store: ResultsStore, client: Any, lease_s: float = LEASE_S,
                 heartbeat_s: float = 2.0) -> None:
        from distributed import as_completed

        self.queue, self.store, self.client, self.lease_s = queue, store, client, lease_s
        self.owner = f"dask:{client.scheduler.address}"
        self.futures: dict[str, Any] = {}
        self.pending = as_completed()
        self.heartbeat = Heartbeat(queue, heartbeat_s, on_cancel=self._cancel, name="coinfer-dask-heartbeat")

    def _on_event(self, event: tuple[float, Mapping[str, Any]]) -> None:
        """A task's progress event: recorded on its lease for the next heartbeat."""
        msg = event[1]
        lease = self.heartbeat.lease(msg.get("id")) if isinstance(msg, Mapping) else None
        if lease is None:
            return
        if "report" in msg:
            kind, step, value = msg["report"]
            lease.record(str(kind), int(step), float(value))
        else:
            lease.progress, lease.message = float(msg["progress"]), f"{msg['message']} (on {msg.get('worker')})"

    def _dispatch(self, ids: list[str]) -> None:
        """Claim each queued job of `ids` not yet sent, and send it to the cluster."""
        for job_id in ids:
            if job_id in self.futures:
                continue
            job = self.queue.claim(self.owner, os.getpid(), self.lease_s, [job_id])
            if job is None:
                continue
            fut = self.client.submit(dask_task, job.spec.to_json(), key=f"coinfer-{job.id}-{(job.lease or '')[:8]}",
                                     pure=False, priority=-job.priority, retries=0)
            self.futures[job_id] = fut
            self.heartbeat.hold(Lease(job, None, None))  # progress as it was until the task reports
            self.pending.add(fut)
            self.queue.heartbeat(job.id, job.lease or "", 0.0, f"sent to {self.owner}")

    def _cancel(self, lease: Lease) -> None:
        """The job is cancelling: drop a waiting task, ask a running one to stop at its next progress report."""
        from distributed import Event

        Event(_cancel_event_name(lease.job.id), client=self.client).set()
        self.futures[lease.job.id].cancel()

    def _settle(self, fut: Any) -> None:
        """A task ended: store its row and mark the job done, cancelled or failed; its lease is let go."""
        job_id = next(i for i, f in self.futures.items() if f is fut)
        lease = self.heartbeat.lease(job_id)
        token = lease.token if lease is not None else ""
        held = self.queue.holding(job_id, token)
        if fut.status == "finished" and held != "cancelling":
            row = fut.result()
            if row is not None and held == "running":
                self.store.put(row)
            self.queue.complete(job_id, token, result_summary(row), f"done on {self.owner}",
                                lease.reports_now() if lease is not None else None)
        elif fut.status == "cancelled" or held == "cancelling":  # asked to stop, even as it finished: cancelled
            self.queue.mark_cancelled(job_id, token)
        else:
            exc = fut.exception()
            self.queue.fail(job_id, token, one_line(exc),
                            "".join(traceback.format_exception(type(exc), exc, fut.traceback())))
        self.heartbeat.drop(job_id)

    def start(self) -> None:
        """Listen to the tasks' progress and start heart-beating (before the first `step`)."""
        self.client.subscribe_topic(PROGRESS_TOPIC, self._on_event)
        self.heartbeat.start()

    def step(self, ids: list[str]) -> tuple[list[Job], bool]:
        """Send the queued jobs of `ids` not yet sent, and settle the tasks that ended.

        Args:
            ids: the jobs run (those queued are claimed; one another worker holds is left to it).
        Returns:
            the jobs of `ids` now, and whether a task ended in this step.
        """
        self._dispatch(ids)
        ready = self.pending.next_batch(block=False) if self.pending.has_ready() else []
        for fut in ready:
            self._settle(fut)
        return self.queue.jobs(ids), bool(ready)

    def stop(self) -> None:
        """Stop heart-beating; the leases still held go back to the queue (an interrupted run resumes)."""
        self.heartbeat.stop()
        for lease in self.heartbeat.held():
            self.queue.release(lease.job.id, lease.token, "queued again: the Dask run stopped")
        self.client.unsubscribe_topic(PROGRESS_TOPIC)

    def run(self, ids: list[str], on_update: Callable[[list[Job]], None] | None = None,
            poll_s: float = 0.5) -> list[Job]:
        """Run the jobs `ids` until every one is finished; interrupted, the leases still held go back to the queue.

        Args:
            ids: the jobs (queued ones are claimed; one another worker holds is left to it).
            on_update: called with the jobs at every poll.
            poll_s: seconds between polls when no task ended.

        Returns:
            The jobs, all finished.
        """
        self.start()
        try:
            while True:
                jobs, moved = self.step(ids)
                if on_update:
                    on_update(jobs)
                if all(j.finished for j in jobs):
                    return jobs
                if not moved:
                    time.sleep(poll_s)
        finally:
            self.stop()


def connect(scheduler: str | Any) -> tuple[Any, bool]:
    """A Dask client for `scheduler` (an address, or a connected `distributed.Client`) and whether this call opened
    it (and must close it).

    Raises:
        UserError: Dask is not installed, or the scheduler cannot be reached.
    """
    try:
        from distributed import Client
    except ImportError:
        raise UserError("the Dask executor needs Dask, an optional extra: "
                        "pip install -r requirements-dask.txt") from None
    if isinstance(scheduler, Client):
        return scheduler, False
    try:
        return Client(scheduler, timeout="20s"), True
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {one_line(exc)}") from None


def run_dask(queue: JobQueue, store: ResultsStore, ids: list[str], scheduler: str | Any,
             on_update: Callable[[list[Job]], None] | None = None, lease_s: float = LEASE_S,
             heartbeat_s: float = 2.0, poll_s: float = 0.5) -> list[Job]:
    """Run the jobs `ids` on a Dask cluster until every one is finished (`DaskExecutor`). If this process dies, the
    jobs go back to the queue; a job another worker holds is left to it (and taken over if that worker dies). A
    cancel (`python -m engine jobs cancel`) drops a waiting task and asks a running one to stop.

    Args:
        queue: the job table.
        store: where the rows go.
        ids: the jobs to run.
        scheduler: the scheduler's address (such as tcp://host:8786), or a connected `distributed.Client`.
        on_update: called with the jobs at every poll.
        lease_s: the lease period of each claim.
        heartbeat_s: seconds between heartbeats.
        poll_s: seconds between polls.

    Returns:
        The jobs, all finished.

    Raises:
        UserError: the scheduler cannot be reached.
    """
    client, own = connect(scheduler)
    try:
        return DaskExecutor(queue, store, client, lease_s, heartbeat_s).run(ids, on_update, poll_s)
    finally:
        if own:
            client.close()
