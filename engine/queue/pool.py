"""Worker processes: a pool of N local workers kept alive while there is work (`WorkerPool`, used by sweeps and
`python -m engine worker`), and the dashboard's detached worker (`ensure_worker`). Workers run in fresh interpreters
(spawn: no forked torch threads or SQLite handles); a worker that dies (killed after ignoring a cancel, out of
memory) is replaced.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.paths import PROJECT_ROOT, cache_dir
from engine.queue.table import ACTIVE, Job, JobQueue
from engine.queue.worker import Worker, WorkerOptions

log = logging.getLogger(__name__)

FAILED_STARTS = 3  # per worker slot: workers that end in error without any job moving before a pool gives up


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
    out of memory) is replaced. `until()` returning True stops the pool.

    Args:
        queue: the job table.
        n: the number of worker processes (at least 1).
        options: how each worker behaves; they may SIGKILL themselves, and share the CPU threads unless told.
    """

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
        return bool(self.queue.jobs(ids, status="queued", tag=self.options.tag))

    def _busy(self) -> bool:
        ids = list(self.options.ids) if self.options.ids is not None else None
        return bool(self.queue.jobs(ids, status=ACTIVE, tag=self.options.tag))

    def _jobs_state(self) -> object:
        ids = list(self.options.ids) if self.options.ids is not None else None
        return sorted((j.id, j.status, j.attempts) for j in self.queue.jobs(ids, tag=self.options.tag))

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

