"""Sweeps: the brute-force search over split, sparsity and compression that fills the lookup table (Shao & Zhang
2020, Sec. "Case study"). Each profile's grid lists, per method, the splits and knob values it covers; the methods
come from the METHODS registry, cheapest first (`original` before the methods that train), so the plane fills in
within minutes. A sweep queues one job per variant missing from the results store and runs them with local worker
processes or on a Dask cluster; both run `engine.jobs.execute`, so a seeded variant gives the same row either way.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.config import BaseModelConfig, VariantConfig
from engine.errors import UserError
from engine.jobs import (
    LEASE_S,
    Job,
    JobQueue,
    JobSpec,
    WorkerOptions,
    WorkerPool,
    execute,
    one_line,
    result_summary,
    worker_log_dir,
)
from engine.methods import METHODS, check_variant
from engine.models import END_POINTS, SPLIT_POINTS, split_names
from engine.profiles import PROFILES, Grid, MethodGrid
from engine.store import ResultsStore

log = logging.getLogger(__name__)

# Relative cost of a method's variants: the base model is shared; `original` only measures, the others train.
# A method object may carry its own `cost` attribute; unknown methods come after these, by name.
COST_RANK = {"original": 0, "bottlenet_pp": 1, "two_step_pruning": 2, "three_step": 3}
PRIORITY_STRIDE = 1000  # priority = cost rank * stride + position within the method's variants
# Variants that train a learned encoder (`enc_*` knobs) cost minutes each: they come after every other variant of
# every method, so the plane fills in with the cheap rows first.
ENCODER_TIER = len(COST_RANK) + 1


def method_cost(name: str) -> tuple[float, str]:
    cost = getattr(METHODS.get(name), "cost", None)
    return (float(cost) if isinstance(cost, (int, float)) else float(COST_RANK.get(name, len(COST_RANK))), name)


def methods_in_order(names: Iterable[str] | None = None) -> list[str]:
    """Registered methods (or `names`, each checked), cheapest first."""
    chosen = list(METHODS) if names is None else [n for n in names]
    for n in chosen:
        METHODS.get(n)
    return sorted(dict.fromkeys(chosen), key=method_cost)


def method_variants(name: str, base: BaseModelConfig, grid: MethodGrid) -> list[VariantConfig]:
    """The method's variants on the grid's splits, crossed with the grid's knob values; end points first."""
    splits = list(grid.splits) if grid.splits is not None else split_names(coarse_only=True)
    for s in splits:
        SPLIT_POINTS.get(s)
    variants = METHODS.get(name).variants(base, splits)
    if grid.knobs:
        names = [k for k, _ in grid.knobs]
        variants = [VariantConfig.make(v.method, v.split, v.base, **{**dict(v.knobs), **dict(zip(names, combo,
                                                                                                     strict=True))})
                    for v in variants for combo in itertools.product(*(vals for _, vals in grid.knobs))]
    unique = list({v.id: v for v in variants}.values())
    return sorted(unique, key=lambda v: v.split not in END_POINTS)  # stable: the method's order otherwise


@dataclass(frozen=True)
class Planned:
    spec: JobSpec
    priority: int

    @property
    def id(self) -> str:
        return self.spec.id


def plan(profile: str, base: BaseModelConfig, data: str | None = None, methods: Iterable[str] | None = None,
         splits: Iterable[str] | None = None, grid: Grid | None = None) -> list[Planned]:
    """The sweep of `profile` for this base model, cheapest first (methods by cost rank, variants that train an
    encoder after all others). `methods` and `splits` narrow it."""
    grid = grid or PROFILES.get(profile).grid
    only = None if splits is None else list(splits)
    out: list[Planned] = []
    for name in methods_in_order(methods):
        mg = grid.for_method(name)
        if only is not None:
            mg = MethodGrid(tuple(only), mg.knobs)
        rank = method_cost(name)[0]
        for i, v in enumerate(method_variants(name, base, mg)):
            tier = ENCODER_TIER if trains_encoder(v) else 0
            out.append(Planned(JobSpec.for_variant(v, profile, data), int((tier + rank) * PRIORITY_STRIDE) + i))
    return sorted(out, key=lambda p: p.priority)


def trains_encoder(cfg: VariantConfig) -> bool:
    """Whether a variant trains a learned feature encoder (it has `enc_*` knobs): the expensive kind."""
    return any(k.startswith("enc_") for k in dict(cfg.knobs))


def default_knobs(method: str, split: str, base: BaseModelConfig, /, **given: Any) -> dict[str, Any]:
    """The knobs of the method's first proposed variant at `split` for this base model ({} where it proposes none)
    that agrees with `given` on the knobs the method names in `defaults_by`: `three_step` with `encoder="two_step"`
    starts from the grid's encoded variant, with the profile's `enc_*` knobs, not from a pruned one."""
    SPLIT_POINTS.get(split)
    impl = METHODS.get(method)
    proposed = [dict(v.knobs) for v in impl.variants(base, [split]) if v.split == split]
    keys = [k for k in getattr(impl, "defaults_by", ()) if k in given]
    agreeing = [knobs for knobs in proposed if all(knobs.get(k) == given[k] for k in keys)]
    return (agreeing or proposed or [{}])[0]


def one_variant(method: str, split: str, profile: str, base: BaseModelConfig, data: str | None = None, /,
                **knobs: Any) -> Planned:
    """A single variant added by hand: the method's own knobs at that split, overridden by `knobs`; a knob the
    method does not have, or cannot use, is a UserError before anything is queued."""
    cfg = VariantConfig.make(method, split, base, **{**default_knobs(method, split, base, **knobs), **knobs})
    check_variant(cfg, PROFILES.get(profile).budget_name)
    return Planned(JobSpec.for_variant(cfg, profile, data), int(method_cost(method)[0] * PRIORITY_STRIDE))


def submit(queue: JobQueue, planned: list[Planned], store: ResultsStore | None = None,
           force: bool = False) -> tuple[list[str], list[str]]:
    """Queue the planned variants not yet in the results store (all of them with `force`); finished jobs of
    those ids are queued again. Returns (queued ids, ids already measured)."""
    measured = [] if force or store is None else [p.id for p in planned if p.id in store]
    todo = [p for p in planned if p.id not in set(measured)]
    queue.submit([p.spec for p in todo], [p.priority for p in todo], requeue_finished=True)
    return [p.id for p in todo], measured


@dataclass
class SweepReport:
    """What a sweep did: its jobs at the end, wall time, seconds to the first finished row, counts per method."""

    planned: list[Planned]
    measured: list[str]
    jobs: list[Job]
    wall_s: float
    first_row_s: float | None

    def per_method(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for p in self.planned:
            out.setdefault(p.spec.method, {"variants": 0, "measured before": 0, "done": 0, "failed": 0,
                                           "cancelled": 0})["variants"] += 1
        for i in self.measured:
            spec = next(p.spec for p in self.planned if p.id == i)
            out[spec.method]["measured before"] += 1
        for j in self.jobs:
            if j.status in ("done", "failed", "cancelled"):
                out[j.spec.method][j.status] += 1
        return out

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "failed"]


def run_local(queue: JobQueue, ids: list[str], workers: int, options: WorkerOptions | None = None,
              on_update: Callable[[list[Job]], None] | None = None, interval: float = 0.5) -> list[Job]:
    """Run the jobs `ids` with `workers` local processes (spawn); returns them once all are finished."""
    if not ids:
        return []
    options = options or WorkerOptions(log_path=str(worker_log_dir() / "worker-{pid}.log"),
                                       console_level=logging.WARNING)
    pool = WorkerPool(queue, workers, dataclasses.replace(options, ids=tuple(ids)))
    latest: list[Job] = []

    def finished() -> bool:
        nonlocal latest
        latest = queue.jobs(ids)
        if on_update:
            on_update(latest)
        return all(j.finished for j in latest)

    pool.run(until=finished, interval=interval)
    return latest


# -- Dask ----------------------------------------------------------------------------------------------------

PROGRESS_TOPIC = "coinfer-progress"


def _cancel_event_name(job_id: str) -> str:
    return f"coinfer-cancel-{job_id}"


def dask_task(spec_json: str) -> dict | None:
    """A job on a Dask worker: `execute` with progress sent to the client as events and a cooperative cancel
    through a distributed Event. The data path of the spec, $COINFER_DATA or the worker's cache/data/ must hold
    the same dataset (its fingerprint is checked)."""
    from distributed import Event, get_worker

    spec = JobSpec.from_json(spec_json)
    job_id = spec.id
    worker = get_worker()
    cancel = Event(_cancel_event_name(job_id))
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            worker.log_event(PROGRESS_TOPIC, {"id": job_id, "progress": fraction, "message": message,
                                              "worker": worker.address})
            if cancel.is_set():
                raise UserError("cancelled")

    return execute(spec, progress)


def run_dask(queue: JobQueue, store: ResultsStore, ids: list[str], scheduler: str | Any,
             on_update: Callable[[list[Job]], None] | None = None, lease_s: float = LEASE_S,
             heartbeat_s: float = 2.0, poll_s: float = 0.5) -> list[Job]:
    """Run the jobs `ids` on the Dask cluster at `scheduler` (an address such as tcp://host:8786, or a Client),
    until every one is finished. This process claims each queued job, holds its lease and heart-beats it, writes
    the returned row to `store` and marks the job done; if it dies, the jobs go back to the queue. A job another
    worker holds is left to it (and taken over if that worker dies). A cancel (`python -m engine jobs cancel`)
    drops a waiting task and asks a running one to stop at its next progress report."""
    import os

    from distributed import Client, Event, as_completed

    own = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler, timeout="20s") if own else scheduler
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {one_line(exc)}") from None
    owner = f"dask:{client.scheduler.address}"
    leases: dict[str, Job] = {}
    futures: dict[str, Any] = {}
    progress: dict[str, tuple[float, str]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    pending = as_completed()

    def on_event(event: tuple[float, Mapping[str, Any]]) -> None:
        msg = event[1]
        if isinstance(msg, Mapping) and msg.get("id") in futures:
            with lock:
                progress[msg["id"]] = (float(msg["progress"]), f"{msg['message']} (on {msg.get('worker')})")

    def dispatch() -> None:
        for job_id in ids:
            if job_id in futures:
                continue
            job = queue.claim(owner, os.getpid(), lease_s, [job_id])
            if job is None:
                continue
            fut = client.submit(dask_task, job.spec.to_json(), key=f"coinfer-{job.id}-{(job.lease or '')[:8]}",
                                pure=False, priority=-job.priority, retries=0)
            with lock:
                leases[job_id], futures[job_id] = job, fut
            pending.add(fut)
            queue.heartbeat(job.id, job.lease or "", 0.0, f"sent to {owner}")

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            with lock:
                held = [(i, leases[i].lease, futures[i], *progress.get(i, (None, None))) for i in futures
                        if leases[i].lease is not None]
            for job_id, lease, fut, frac, msg in held:
                try:
                    state = queue.heartbeat(job_id, lease, frac, msg)
                except Exception as exc:  # noqa: BLE001 - keep beating through a busy database
                    log.warning("heartbeat failed: %s", one_line(exc))
                    continue
                if state is not None and state[0] == "cancelling":
                    Event(_cancel_event_name(job_id), client=client).set()
                    fut.cancel()

    def settle(fut: Any) -> None:
        job_id = next(i for i, f in futures.items() if f is fut)
        lease = leases[job_id].lease or ""
        if fut.status == "finished":
            row = fut.result()
            if row is not None and queue.still_holds(job_id, lease):
                store.put(row)
            queue.complete(job_id, lease, result_summary(row), f"done on {owner}")
        elif fut.status == "cancelled" or queue.get(job_id).status == "cancelling":
            queue.mark_cancelled(job_id, lease)
        else:
            exc = fut.exception()
            queue.fail(job_id, lease, one_line(exc),
                       "".join(traceback.format_exception(type(exc), exc, fut.traceback())))
        with lock:
            leases[job_id] = dataclasses.replace(leases[job_id], lease=None)

    client.subscribe_topic(PROGRESS_TOPIC, on_event)
    thread = threading.Thread(target=beat, name="coinfer-dask-heartbeat", daemon=True)
    thread.start()
    try:
        while True:
            dispatch()
            ready = pending.next_batch(block=False) if pending.has_ready() else []
            for fut in ready:
                settle(fut)
            jobs = queue.jobs(ids)
            if on_update:
                on_update(jobs)
            if all(j.finished for j in jobs):
                return jobs
            if not ready:
                time.sleep(poll_s)
    finally:
        stop.set()
        thread.join(timeout=5)
        for job_id, job in leases.items():  # interrupted: give what is still held back to the queue
            if job.lease is not None:
                queue.release(job_id, job.lease, "queued again: the Dask sweep stopped")
        client.unsubscribe_topic(PROGRESS_TOPIC)
        if own:
            client.close()


def run(planned: list[Planned], *, queue: JobQueue | None = None, store: ResultsStore | None = None,
        workers: int = 1, scheduler: str | Any | None = None, force: bool = False,
        options: WorkerOptions | None = None, on_update: Callable[[list[Job]], None] | None = None) -> SweepReport:
    """Queue the planned variants and run them: on the Dask cluster at `scheduler`, else with `workers` local
    processes (0: only queue them, for workers started elsewhere)."""
    queue = JobQueue() if queue is None else queue
    store = ResultsStore() if store is None else store  # an empty store is falsy
    start, t0 = time.perf_counter(), time.time()
    ids, measured = submit(queue, planned, store, force)
    if ids and (workers > 0 or scheduler is not None) and queue.resume():
        log.info("the job queue was paused; running a sweep resumes it")
    try:
        if not ids:
            jobs: list[Job] = []
        elif scheduler is not None:
            jobs = run_dask(queue, store, ids, scheduler, on_update)
        elif workers > 0:
            options = options or WorkerOptions(log_path=str(worker_log_dir() / "worker-{pid}.log"),
                                               console_level=logging.WARNING)
            jobs = run_local(queue, ids, workers, dataclasses.replace(options, store_path=str(store.path)),
                             on_update)
        else:
            jobs = queue.jobs(ids)
    except KeyboardInterrupt:  # stopped by hand: its jobs stay queued, and nothing restarts them behind its back
        queue.pause("the sweep was interrupted; run it again, or `python -m engine jobs resume`")
        raise
    done = [j.finished_at for j in jobs if j.status == "done" and j.finished_at]
    return SweepReport(planned, measured, jobs, time.perf_counter() - start, min(done) - t0 if done else None)
