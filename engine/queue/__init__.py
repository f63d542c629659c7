"""The job queue: one SQLite row per variant id under cache/, and the workers that run them.

- `table`: the job table (`JobQueue`, `Job`, statuses, leases in SQL).
- `spec`: what a job is (`JobSpec`) and how one runs (`execute`, the one code path of local workers and Dask tasks).
- `lease`: the leases this process holds and the heartbeat that renews them.
- `worker`: a worker running jobs in this process (`Worker`, `WorkerOptions`).
- `pool`: worker processes (`WorkerPool`) and the dashboard's detached worker (`ensure_worker`).
- `dask`: the Dask executor (`run_dask`).
"""

from __future__ import annotations

from engine.queue.dask import DaskExecutor, dask_task, run_dask
from engine.queue.lease import HEARTBEAT_S, Heartbeat, JobCancelled, JobLost, Lease
from engine.queue.pool import (
    FAILED_STARTS,
    WorkerPool,
    ensure_worker,
    interrupt_on_terminate,
    start_worker_process,
    wait_for,
    worker_log_dir,
    worker_main,
)
from engine.queue.spec import BASE_SHARE, JobSpec, execute, load_job_data, result_summary
from engine.queue.table import (
    ACTIVE,
    CANCEL_GRACE_S,
    FINISHED,
    LEASE_S,
    MAX_ATTEMPTS,
    STATUSES,
    Job,
    JobQueue,
    default_path,
)
from engine.queue.worker import Worker, WorkerOptions

__all__ = [
    "ACTIVE",
    "BASE_SHARE",
    "CANCEL_GRACE_S",
    "FAILED_STARTS",
    "FINISHED",
    "HEARTBEAT_S",
    "LEASE_S",
    "MAX_ATTEMPTS",
    "STATUSES",
    "DaskExecutor",
    "Heartbeat",
    "Job",
    "JobCancelled",
    "JobLost",
    "JobQueue",
    "JobSpec",
    "Lease",
    "Worker",
    "WorkerOptions",
    "WorkerPool",
    "dask_task",
    "default_path",
    "ensure_worker",
    "execute",
    "interrupt_on_terminate",
    "load_job_data",
    "result_summary",
    "run_dask",
    "start_worker_process",
    "wait_for",
    "worker_log_dir",
    "worker_main",
]
