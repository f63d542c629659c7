"""Commands of the job queue: `sweep` (queue a profile's grid and run it), `jobs` (list, show, cancel, retry,
submit, clean, pause, resume) and `worker` (take jobs from the queue until stopped)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd

from engine.cli.common import (
    Bar,
    add_common,
    chosen_splits,
    data_path,
    load,
    processes_int,
    seconds,
    writable_cache,
)
from engine.errors import UserError

if TYPE_CHECKING:
    from engine.config import BaseModelConfig
    from engine.data import ImageData
    from engine.queue import Job, JobQueue


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sweep`, `jobs` and `worker` commands.

    Args:
        subparsers: the command line's subcommands.
    """
    from engine.queue import HEARTBEAT_S, LEASE_S

    p = subparsers.add_parser("sweep", help="queue a profile's grid of variants (cheapest first) and run it with "
                                            "local worker processes or on a Dask cluster")
    add_common(p)
    p.add_argument("--method", action="append", help="only this method (repeatable; default: every registered one)")
    p.add_argument("--split", action="append", help="only this split point (repeatable; default: the grid's)")
    p.add_argument("--workers", type=processes_int, default=1,
                   help="local worker processes (default 1; 0: only queue the jobs for `python -m engine worker`)")
    p.add_argument("--scheduler", help="run the jobs on the Dask cluster at this address, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--force", action="store_true", help="measure again the variants already in the results store")
    p.add_argument("--no-cross", action="store_true",
                   help="only the grid planned up front: do not cross three_step's snapshots that hold the threshold "
                        "with the profile's codings as they are measured")

    _add_jobs_parser(subparsers)

    p = subparsers.add_parser("worker", help="take jobs from the queue and run them until stopped (Ctrl-C)")
    p.add_argument("--processes", type=processes_int, default=1, help="worker processes (default 1)")
    p.add_argument("--idle-exit", type=seconds, metavar="SECONDS",
                   help="exit after this long without a job, and not before one lease while jobs run elsewhere "
                        "(a dead worker's job is taken over) (default: keep waiting)")
    p.add_argument("--heartbeat", type=seconds, default=HEARTBEAT_S,
                   help=f"seconds between heartbeats (default {HEARTBEAT_S:g})")
    p.add_argument("--lease", type=seconds, default=LEASE_S,
                   help=f"seconds without a heartbeat after which a job returns to the queue (default {LEASE_S:g})")


def _add_jobs_parser(subparsers: argparse._SubParsersAction) -> None:
    """The `jobs` command and its actions."""
    from engine.queue import CANCEL_GRACE_S, STATUSES

    p = subparsers.add_parser("jobs", help="the job queue: list, show, cancel, retry, submit, clean, pause, resume")
    actions = p.add_subparsers(dest="action")
    q = actions.add_parser("list", help="jobs in claim order (the default action)")
    q.add_argument("--status", choices=STATUSES, action="append", help="only jobs in this state (repeatable)")
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON records on stdout")
    p.add_argument("--json", action="store_true", help="list the jobs as JSON records on stdout")
    p.set_defaults(action="list", status=None)
    q = actions.add_parser("show", help="everything about one job, its error and traceback included")
    q.add_argument("id", help="job id (or its first characters)")
    q = actions.add_parser("cancel", help="cancel queued or running jobs (a running one stops at its next progress "
                                          "report, or is killed after the grace period)")
    q.add_argument("id", nargs="*", help="job ids (or their first characters)")
    q.add_argument("--all", action="store_true", help="every queued or running job")
    q.add_argument("--grace", type=seconds, default=CANCEL_GRACE_S,
                   help=f"seconds a running job may take to stop before its worker is killed "
                        f"(default {CANCEL_GRACE_S:g})")
    q = actions.add_parser("retry", help="queue failed or cancelled jobs again")
    q.add_argument("id", nargs="*", help="job ids (or their first characters)")
    q.add_argument("--failed", action="store_true", help="every failed job")
    q = actions.add_parser("submit", help="add one variant to the queue (a worker or sweep runs it)")
    add_common(q)
    q.add_argument("method", help="method name, e.g. original")
    q.add_argument("--split", required=True, action="append", help="split point (repeatable)")
    q.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="a knob of the method, e.g. bits=4 (repeatable; values are read as JSON when they can be)")
    actions.add_parser("clean", help="remove done and cancelled jobs from the table (results stay)")
    actions.add_parser("pause", help="hand out no more jobs (running ones go on, queued ones wait) until resume; "
                                     "nothing starts a worker on its own meanwhile")
    actions.add_parser("resume", help="hand out jobs again")


# -- sweep ----------------------------------------------------------------------------------------------------


def _fmt_job_line(job: Job) -> str:
    """One line about a finished job, as the sweep prints it."""
    r = job.result or {}
    if job.status == "failed":
        return f"failed {job.describe()}: {job.error}"
    if job.status != "done":
        return f"{job.status} {job.describe()}"
    parts = [f"acc {r['accuracy']:.2%}" if "accuracy" in r else "", f"{r['bits_actual']:.0f} bits"
             if "bits_actual" in r else "", f"{r['device_flops'] / 1e6:.2f} MFLOPs" if "device_flops" in r else ""]
    return f"done   {job.describe()}  " + "  ".join(p for p in parts if p)


def _sweep_progress(bar: Bar) -> Callable[[list[Job]], None]:
    """A sweep's on_update callback: moves `bar` and prints each job once it has finished."""
    seen: set[str] = set()

    def on_update(jobs: list[Job]) -> None:
        total = max(len(jobs), 1)
        done = sum(1.0 if j.finished else j.progress if j.status == "running" else 0.0 for j in jobs)
        running = [j for j in jobs if j.status in ("running", "cancelling")]
        finished = sum(j.finished for j in jobs)
        note = f"{finished}/{len(jobs)} finished"
        if running:
            note += f"; {running[0].method} {running[0].split}: {running[0].message}"
        bar(done / total, note[:80])
        for j in jobs:
            if j.finished and j.id not in seen:
                seen.add(j.id)
                bar.write(_fmt_job_line(j))

    return on_update


def _train_base_first(base: BaseModelConfig, data: ImageData) -> None:
    """Train a missing base model in this process, on every CPU thread, before local workers start: every job needs
    it, and the first worker to claim one would otherwise train it on its share of the threads while the others
    wait on its lock (on 2 cores with 2 workers, one core idle for the whole base training)."""
    import torch

    from engine.train import base_checkpoint_path, load_or_train_base

    cache = writable_cache()
    if base.weights or base_checkpoint_path(base, cache).exists():
        return
    print(f"sweep: training the base model {base.id} first, on {torch.get_num_threads()} threads", flush=True)
    bar = Bar(f"base {base.id}")
    try:
        load_or_train_base(base, data, cache, bar)
    finally:
        bar.close()


def _cmd_sweep(args: argparse.Namespace) -> int:
    """Queue the profile's grid of variants and run it; exit status 1 when a job failed."""
    from engine import sweep
    from engine.queue import JobQueue
    from engine.store import ResultsStore

    if args.scheduler is not None and "://" not in args.scheduler and ":" not in args.scheduler:
        raise UserError(f"--scheduler wants a Dask scheduler address such as tcp://10.0.0.5:8786, got "
                        f"{args.scheduler!r}")
    if not args.verbose:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    profile, data, base = load(args)
    if args.workers > 1 and args.scheduler is None:
        _train_base_first(base, data)
    planned = sweep.plan(profile.name, base, data_path(args), methods=args.method,
                         splits=chosen_splits(args, base))
    queue, store = JobQueue(), ResultsStore()
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.spec.method] = counts.get(p.spec.method, 0) + 1
    print(f"sweep {profile.name}: base model {base.id} (width {base.width:g}), {len(planned)} variants: "
          + ", ".join(f"{m} {n}" for m, n in counts.items()), flush=True)
    bar = Bar(f"sweep {profile.name}")
    try:
        follow = None if args.no_cross else (
            lambda measured, planned: sweep.followups(profile.name, base, measured, data_path(args),
                                                      methods=args.method, splits=chosen_splits(args, base),
                                                      exclude=planned))
        report = sweep.run(planned, queue=queue, store=store, workers=args.workers, scheduler=args.scheduler,
                           force=args.force, on_update=_sweep_progress(bar), follow=follow)
    finally:
        bar.close()
    if len(report.planned) > len(planned):
        print(f"{len(report.planned) - len(planned)} crossed variants followed as rows arrived "
              "(pruning snapshots that hold the threshold x the profile's codings)")
    if report.measured:
        print(f"{len(report.measured)} of {len(report.planned)} variants were already in the results store "
              "(--force measures them again)")
    if args.workers == 0 and args.scheduler is None and report.jobs:
        print(f"{len(report.jobs)} jobs queued in {queue.path}: start workers with `python -m engine worker`")
        return 0
    first = f", first row after {report.first_row_s:.1f} s" if report.first_row_s is not None else ""
    print(f"sweep {profile.name} finished in {report.wall_s:.1f} s{first}")
    table = pd.DataFrame.from_dict(report.per_method(), orient="index")
    print(table.rename_axis("method").to_string())
    for job in report.failed:
        print(f"failed: {job.describe()}: {job.error}  (`python -m engine jobs show {job.id}`)")
    return 1 if report.failed else 0


# -- jobs -----------------------------------------------------------------------------------------------------


def _age(t: float | None) -> str:
    if t is None:
        return ""
    s = max(time.time() - t, 0.0)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.0f}h"


def _jobs_table(jobs: list[Job]) -> pd.DataFrame:
    return pd.DataFrame([{
        "id": j.id, "status": j.status, "progress": f"{j.progress:.0%}", "method": j.method, "split": j.split,
        "profile": j.spec.profile, "width": f"{j.spec.width:g}" if j.kind == "variant" else "",
        "attempts": j.attempts, "pid": j.worker_pid or "", "updated": _age(j.updated_at),
        "message": (j.error if j.status == "failed" else j.message or "")[:70],
    } for j in jobs])


def _resolve_ids(queue: JobQueue, ids: list[str]) -> list[Job]:
    return [queue.resolve(i) for i in ids]


def _job_record(job: Job) -> dict:
    """One job as `jobs --json` lists it: times as Unix seconds, progress as a fraction."""
    return {"id": job.id, "kind": job.kind, "status": job.status, "progress": job.progress, "method": job.method,
            "split": job.split, "profile": job.spec.profile, "width": job.spec.width if job.kind == "variant" else None,
            "attempts": job.attempts, "max_attempts": job.max_attempts, "worker_pid": job.worker_pid,
            "submitted_at": job.submitted_at, "started_at": job.started_at, "finished_at": job.finished_at,
            "updated_at": job.updated_at, "message": job.message, "error": job.error}


def _jobs_list(queue: JobQueue, args: argparse.Namespace) -> int:
    """`jobs list`: the jobs in claim order, the counts per state, the live workers and whether paused."""
    jobs = queue.jobs(status=args.status)
    if getattr(args, "json", False):
        print(json.dumps([_job_record(j) for j in jobs], indent=1, allow_nan=False))
        return 0
    if not jobs:
        print("no jobs" + (f" with status {', '.join(args.status)}" if args.status else "")
              + ": queue some with `python -m engine sweep` or `python -m engine jobs submit`")
        return 0
    print(_jobs_table(jobs).to_string(index=False))
    counts = queue.counts()
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    workers = queue.live_workers()
    print(f"{len(workers)} live worker(s)" + (": " + ", ".join(f"pid {w['pid']}" for w in workers)
                                               if workers else "; start one with `python -m engine worker`"))
    if (reason := queue.paused()) is not None:
        print(f"the queue is paused ({reason})")
    return 0


def _jobs_show(queue: JobQueue, args: argparse.Namespace) -> int:
    """`jobs show`: everything about one job, its error and traceback included."""
    job = queue.resolve(args.id)
    print(f"job        {job.id} ({job.kind})")
    print(f"what       {job.describe()}")
    print(f"status     {job.status} ({job.progress:.0%}: {job.message})")
    print(f"attempts   {job.attempts} of {job.max_attempts}; worker {job.worker or '-'}")
    for name in ("submitted_at", "started_at", "finished_at"):
        t = getattr(job, name)
        if t:
            print(f"{name.split('_')[0]:<10} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))}")
    if job.result:
        print(f"result     {json.dumps(job.result)}")
    print(f"spec       {job.spec.to_json()}")
    if job.error:
        print(f"error      {job.error}")
    if job.traceback:
        print(job.traceback.rstrip())
    return 0


def _jobs_cancel(queue: JobQueue, args: argparse.Namespace) -> int:
    """`jobs cancel`: cancel the named jobs, or every queued or running one."""
    from engine.queue import ACTIVE

    if not args.id and not args.all:
        raise UserError("name the job(s) to cancel, or pass --all")
    jobs = queue.jobs(status=ACTIVE) if args.all else _resolve_ids(queue, args.id)
    for job in jobs:
        print(f"{job.id}: {queue.cancel(job.id, args.grace)}")
    return 0


def _jobs_retry(queue: JobQueue, args: argparse.Namespace) -> int:
    """`jobs retry`: queue the named jobs again, or every failed one."""
    if not args.id and not args.failed:
        raise UserError("name the job(s) to retry, or pass --failed")
    jobs = queue.jobs(status="failed") if args.failed else _resolve_ids(queue, args.id)
    for job in jobs:
        print(f"{job.id}: {queue.retry(job.id)}")
    return 0


def _jobs_submit(queue: JobQueue, args: argparse.Namespace) -> int:
    """`jobs submit`: add one variant (at each named split) to the queue."""
    from engine import sweep
    from engine.knobs import parse_knob_items

    knobs = parse_knob_items(args.knob)
    profile, _, base = load(args)
    planned = [sweep.one_variant(args.method, s, profile.name, base, data_path(args), **knobs) for s in args.split]
    ids = queue.submit([p.spec for p in planned], [p.priority for p in planned])
    for job in queue.jobs(ids):
        print(f"{job.id}: {job.status} ({job.describe()})")
    return 0


def _jobs_clean(queue: JobQueue, args: argparse.Namespace) -> int:
    """`jobs clean`: remove done and cancelled jobs from the table."""
    print(f"removed {queue.delete_finished()} done or cancelled jobs")
    return 0


def _jobs_pause(queue: JobQueue, args: argparse.Namespace) -> int:
    """`jobs pause`: hand out no more jobs until `jobs resume`."""
    queue.pause("paused by hand; `python -m engine jobs resume` goes on")
    print("paused: running jobs go on, queued ones wait for `python -m engine jobs resume`")
    return 0


def _jobs_resume(queue: JobQueue, args: argparse.Namespace) -> int:
    """`jobs resume`: hand out jobs again."""
    print("resumed: workers take queued jobs again" if queue.resume() else "the queue was not paused")
    return 0


JOBS_ACTIONS: dict[str, Callable[[JobQueue, argparse.Namespace], int]] = {
    "list": _jobs_list, "show": _jobs_show, "cancel": _jobs_cancel, "retry": _jobs_retry, "submit": _jobs_submit,
    "clean": _jobs_clean, "pause": _jobs_pause, "resume": _jobs_resume}


def _cmd_jobs(args: argparse.Namespace) -> int:
    """Run the `jobs` action the command line names on the job queue."""
    from engine.queue import JobQueue

    queue = JobQueue()
    action = JOBS_ACTIONS.get(args.action)
    if action is None:
        raise UserError(f"unknown jobs action {args.action!r}")
    return action(queue, args)


# -- worker ---------------------------------------------------------------------------------------------------


def _cmd_worker(args: argparse.Namespace) -> int:
    """Take jobs from the queue and run them in worker processes until stopped (or idle, with --idle-exit)."""
    from engine.queue import JobQueue, WorkerOptions, WorkerPool

    writable_cache()
    if args.processes < 1:
        raise UserError("--processes must be at least 1")
    if args.lease <= 2 * args.heartbeat:
        raise UserError(f"--lease ({args.lease:g} s) must be more than twice --heartbeat ({args.heartbeat:g} s)")
    queue = JobQueue()
    options = WorkerOptions(heartbeat_s=args.heartbeat, lease_s=args.lease, idle_exit_s=args.idle_exit)
    pool = WorkerPool(queue, args.processes, options)
    print(f"worker: {args.processes} process(es) on {queue.path}"
          + (f", exiting after {args.idle_exit:g} s idle" if args.idle_exit else "; Ctrl-C to stop"), flush=True)
    if (reason := queue.paused()) is not None:
        print(f"the queue is paused ({reason}): this worker waits until `python -m engine jobs resume`", flush=True)
    pool.run(keep_alive=args.idle_exit is None)
    return 0


COMMANDS = {"sweep": _cmd_sweep, "jobs": _cmd_jobs, "worker": _cmd_worker}
