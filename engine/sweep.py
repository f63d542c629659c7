"""Sweeps: the brute-force search over split, sparsity and compression that fills the lookup table (Shao & Zhang
2020, Sec. "Case study"). Each profile's grid lists, per method, the splits and knob values it covers; the methods
come from the METHODS registry, cheapest first (`original` before the methods that train), so the plane fills in
within minutes. A sweep queues one job per variant missing from the results store and runs them with local worker
processes or on a Dask cluster; both run `engine.queue.execute`, so a seeded variant gives the same row either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.config import BaseModelConfig, VariantConfig
from engine.methods import METHODS, check_variant
from engine.models import END_POINTS, check_splits, split_names
from engine.profiles import PROFILES, Grid, MethodGrid
from engine.queue import (
    ACTIVE,
    Job,
    JobQueue,
    JobSpec,
    WorkerOptions,
    WorkerPool,
    run_dask,
    worker_log_dir,
)
from engine.store import ResultsStore

log = logging.getLogger(__name__)

# Relative cost of a method's variants: the base model is shared; `original` only measures, the others train.
# A method object may carry its own `cost` attribute; unknown methods come after these, by name.
COST_RANK = {"original": 0, "bottlenet_pp": 1, "two_step_pruning": 2, "three_step": 3}
PRIORITY_STRIDE = 1000  # priority = cost rank * stride + position within the method's variants
# Variants that train a learned encoder (`enc_*` knobs) cost minutes each: they come after every other variant of
# every method, so the plane fills in with the cheap rows first.
ENCODER_TIER = len(COST_RANK) + 1
FOLLOWUP_OFFSET = PRIORITY_STRIDE // 2  # follow-ups come after the variants planned up front of the same tier
MAX_STAGES = 64  # rounds of follow-ups a sweep plans as rows arrive (a round may hold one encoder per split)


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
    splits = list(grid.splits) if grid.splits is not None else split_names(base.model, coarse_only=True)
    check_splits(base.model, splits)
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


def followups(profile: str, base: BaseModelConfig, store: ResultsStore, data: str | None = None,
              methods: Iterable[str] | None = None, splits: Iterable[str] | None = None,
              exclude: Collection[str] = ()) -> list[Planned]:
    """The variants methods add once rows are measured (`three_step` crosses each snapshot that holds its threshold
    with the profile's codings, leaving out what a measured row provably dominates), not yet in `store`, cheapest
    first.

    Args:
        profile: the sweep's profile; base: its base model; store: the measured rows; data: the dataset path;
        methods, splits: the methods and split points swept (None: all).
        exclude: ids not to plan (planned before: a follow-up that failed is not tried again).
    Returns:
        the planned follow-up variants, after every variant of the same cost tier planned up front.
    """
    base_id = base.id  # a hash of the config: once, not once per row
    stored = store.rows()
    rows = [r for r in stored if r.get("base_id") == base_id]
    measured = {r["id"] for r in stored}  # one read of the store, not one query per candidate
    out: list[Planned] = []
    for name in methods_in_order(methods):
        follow = getattr(METHODS.get(name), "followups", None)
        if follow is None:
            continue
        rank = method_cost(name)[0]
        for i, v in enumerate(follow(base, rows)):
            if v.id in measured or v.id in exclude or (splits is not None and v.split not in splits):
                continue
            tier = ENCODER_TIER if trains_encoder(v) else 0
            out.append(Planned(JobSpec.for_variant(v, profile, data),
                               int((tier + rank) * PRIORITY_STRIDE) + FOLLOWUP_OFFSET + i))
    return sorted(out, key=lambda p: p.priority)


def next_round(queue: JobQueue, store: ResultsStore, base: BaseModelConfig) -> list[str] | None:
    """One step of a sweep that crosses as rows arrive, for a caller that cannot wait on it (the dashboard): when
    `base`'s sweep is followed (`JobQueue.follow`) and none of its jobs is queued or running, queue its next round
    of follow-ups (`followups`, one encoder per split: `take`); when there is none, stop following.

    Args:
        queue: the job table; store: the measured rows; base: the sweep's base model.
    Returns:
        the ids queued now ([] when the round is still running), or None when `base` is not followed (any more).
    """
    plan = queue.following(base.id)
    if plan is None:
        return None
    jobs = queue.jobs(base_id=base.id, reap=False)
    if any(j.status in ACTIVE for j in jobs):
        return []
    stage = take(followups(str(plan["profile"]), base, store, plan.get("data"), plan.get("methods"),
                           exclude={j.id for j in jobs}))
    if not stage:
        queue.follow(base.id, None)
        return None
    return queue.submit([p.spec for p in stage], [p.priority for p in stage])


def trains_encoder(cfg: VariantConfig | JobSpec) -> bool:
    """Whether a variant (or a job's spec) trains a learned feature encoder (it has `enc_*` knobs): the expensive
    kind."""
    return any(k.startswith("enc_") for k in dict(cfg.knobs))


def take(candidates: list[Planned], busy: Collection[str] = (), idle: int = 0) -> list[Planned]:
    """Which follow-ups to queue now, in the order `followups` plans them: each that trains no encoder (seconds);
    of those that do, the first at each split with no encoder in flight (`busy`), since its row may leave the rest
    of that split's out as dominated; then, while `idle` workers would have nothing to run, the next encoders, one
    split after another, rather than leave a worker standing.

    Args:
        candidates: the follow-ups planned from the measured rows (`followups`), best first per split.
        busy: the splits where an encoder is queued or training.
        idle: the workers with nothing to run (none queued for them); the encoders of free splits fill them first.
    Returns:
        the follow-ups to queue, in the order given.
    """
    cheap: list[Planned] = []
    per_split: dict[str, list[Planned]] = {}
    for p in candidates:
        if trains_encoder(p.spec):
            per_split.setdefault(p.spec.split, []).append(p)
        else:
            cheap.append(p)
    chosen = [line[0] for split, line in per_split.items() if split not in busy]
    extra = itertools.chain.from_iterable(itertools.zip_longest(
        *[line[1:] if split not in busy else line for split, line in per_split.items()]))
    chosen += [p for p in itertools.islice((p for p in extra if p is not None), max(0, idle - len(chosen)))]
    keep = {p.id for p in cheap + chosen}
    return [p for p in candidates if p.id in keep]


def default_knobs(method: str, split: str, base: BaseModelConfig, /, **given: Any) -> dict[str, Any]:
    """The knobs of the method's first proposed variant at `split` for this base model ({} where it proposes none)
    that agrees with `given` on the knobs the method names in `defaults_by`: `three_step` with `encoder="two_step"`
    starts from the grid's encoded variant, with the profile's `enc_*` knobs, not from a pruned one."""
    check_splits(base.model, [split])
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
    canonical = getattr(METHODS.get(method), "canonical", None)  # written as the grid and a search write it
    cfg = canonical(cfg) if canonical is not None else cfg
    return Planned(JobSpec.for_variant(cfg, profile, data), int(method_cost(method)[0] * PRIORITY_STRIDE))


def submit(queue: JobQueue, planned: list[Planned], store: ResultsStore | None = None,
           force: bool = False, tag: str | None = None) -> tuple[list[str], list[str]]:
    """Queue the planned variants not yet in the results store (all of them with `force`), for the workers of
    `tag` (None: any); finished jobs of those ids are queued again. Returns (queued ids, ids already measured)."""
    measured = [] if force or store is None else [p.id for p in planned if p.id in store]
    todo = [p for p in planned if p.id not in set(measured)]
    queue.submit([p.spec for p in todo], [p.priority for p in todo], requeue_finished=True, tag=tag)
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
    pool = WorkerPool(queue, workers, dataclasses.replace(options or _worker_options(), ids=tuple(ids)))
    latest: list[Job] = []

    def finished() -> bool:
        nonlocal latest
        latest = queue.jobs(ids)
        if on_update:
            on_update(latest)
        return all(j.finished for j in latest)

    pool.run(until=finished, interval=interval)
    return latest


def run(planned: list[Planned], *, queue: JobQueue | None = None, store: ResultsStore | None = None,
        workers: int = 1, scheduler: str | Any | None = None, force: bool = False,
        options: WorkerOptions | None = None, on_update: Callable[[list[Job]], None] | None = None,
        follow: Callable[[ResultsStore, set[str]], list[Planned]] | None = None) -> SweepReport:
    """Queue the planned variants and run them: on the Dask cluster at `scheduler`, else with `workers` local
    processes (0: only queue them, for workers started elsewhere). With `follow`, the variants it plans from the
    measured rows (`followups`) run next, round after round, until it plans nothing new.

    Args:
        planned: the variants planned up front; queue, store: the job table and the results store (defaults: the
            cache's); workers, scheduler: where they run; force: measure again what is stored; options: the local
            workers'; on_update: called with the jobs as they progress; follow: plans follow-ups from the store,
            given the ids planned so far (not to plan again).
    Returns:
        what the sweep did, follow-ups included.
    """
    queue = JobQueue() if queue is None else queue
    store = ResultsStore() if store is None else store  # an empty store is falsy
    start, t0 = time.perf_counter(), time.time()
    if follow is not None and scheduler is None and workers > 0:
        all_planned, measured, jobs = _run_rolling(planned, queue, store, workers, force, options, on_update, follow)
    else:
        all_planned, measured, jobs = _run_rounds(planned, queue, store, workers, scheduler, force, options,
                                                  on_update, follow)
    done = [j.finished_at for j in jobs if j.status == "done" and j.finished_at]
    return SweepReport(all_planned, measured, jobs, time.perf_counter() - start, min(done) - t0 if done else None)


def _run_rounds(planned: list[Planned], queue: JobQueue, store: ResultsStore, workers: int,
                scheduler: str | Any | None, force: bool, options: WorkerOptions | None,
                on_update: Callable[[list[Job]], None] | None,
                follow: Callable[[ResultsStore, set[str]], list[Planned]] | None
                ) -> tuple[list[Planned], list[str], list[Job]]:
    """A sweep in rounds (on Dask, or only queued): each round's follow-ups (`take`: one encoder per split) are
    planned once the round before has finished."""
    all_planned, measured, jobs = list(planned), [], []
    stage = planned
    for _ in range(MAX_STAGES):
        ids, done_before = submit(queue, stage, store, force)
        measured += done_before
        jobs += _run_stage(queue, store, ids, workers, scheduler, options, on_update)
        if follow is None or (workers <= 0 and scheduler is None):
            break
        stage = take(follow(store, {p.id for p in all_planned}))
        if not stage:
            break
        all_planned += stage
        force = False  # follow-ups are new variants
    return all_planned, measured, jobs


def sweep_tag(base_id: str) -> str:
    """The tag a local sweep of the base model `base_id` gives its jobs (its workers claim those, and a benchmark
    reads that sweep's jobs apart from others of the same base)."""
    return f"sweep:{base_id}"


def sweep_jobs(jobs: Iterable[Job], base_id: str) -> list[Job]:
    """The jobs of the sweep of `base_id` among `jobs`: those carrying its tag (`sweep_tag`) where any do; else the
    untagged ones (a sweep before tags, in rounds on Dask or from the dashboard, with jobs added by hand). Never a
    study's (tagged with the study's name).

    Args:
        jobs: jobs of the job table; base_id: the sweep's base model.
    Returns:
        the sweep's, in the order given.
    """
    jobs = [j for j in jobs if j.spec.base_id == base_id]
    tagged = [j for j in jobs if j.tag == sweep_tag(base_id)]
    return tagged or [j for j in jobs if j.tag is None]


def _run_rolling(planned: list[Planned], queue: JobQueue, store: ResultsStore, workers: int, force: bool,
                 options: WorkerOptions | None, on_update: Callable[[list[Job]], None] | None,
                 follow: Callable[[ResultsStore, set[str]], list[Planned]]
                 ) -> tuple[list[Planned], list[str], list[Job]]:
    """A sweep on local workers that plans its follow-ups each time a job finishes (`take`: one encoder in flight
    per split, more where a worker would stand idle), so no worker waits for a round's slowest job. Its jobs carry
    the sweep's tag, which its workers claim, so the follow-ups queued while they run are theirs too."""
    tag = sweep_tag(planned[0].spec.base_id if planned else "")
    all_planned = list(planned)
    ids, measured = submit(queue, planned, store, force, tag=tag)
    pool = WorkerPool(queue, workers, dataclasses.replace(options or _worker_options(), store_path=str(store.path),
                                                          tag=tag))
    latest: list[Job] = []
    planned_at = -1  # the number of finished jobs when the follow-ups were last planned

    def finished() -> bool:
        nonlocal latest, planned_at
        latest = queue.jobs(ids)
        if on_update:
            on_update(latest)
        active = [j for j in latest if not j.finished]
        if len(latest) - len(active) != planned_at:
            planned_at = len(latest) - len(active)
            busy = {j.spec.split for j in active if trains_encoder(j.spec)}
            idle = workers - len(active)
            stage = take(follow(store, {p.id for p in all_planned}), busy, idle)
            new, known = submit(queue, stage, store, tag=tag)
            all_planned.extend(stage)
            ids.extend(new)
            measured.extend(known)
            if new:
                return False
        return not active

    with _running(queue):
        pool.run(until=finished, interval=0.5)
    return all_planned, measured, queue.jobs(ids)


def _run_stage(queue: JobQueue, store: ResultsStore, ids: list[str], workers: int, scheduler: str | Any | None,
               options: WorkerOptions | None, on_update: Callable[[list[Job]], None] | None) -> list[Job]:
    """Run the queued jobs `ids` on Dask, local workers, or nowhere (workers=0); returns them at the end."""
    if not ids:
        return []
    if scheduler is None and workers <= 0:
        return queue.jobs(ids)
    with _running(queue):
        if scheduler is not None:
            return run_dask(queue, store, ids, scheduler, on_update)
        return run_local(queue, ids, workers, dataclasses.replace(options or _worker_options(),
                                                                  store_path=str(store.path)), on_update)


@contextlib.contextmanager
def _running(queue: JobQueue) -> Iterator[None]:
    """While a sweep runs its jobs: a paused queue is resumed (running the sweep again resumes it), and a sweep
    stopped by hand (Ctrl-C, SIGTERM) pauses it, so that its jobs stay queued and nothing restarts them behind its
    back."""
    if queue.resume():
        log.info("the job queue was paused; running a sweep resumes it")
    try:
        yield
    except KeyboardInterrupt:
        queue.pause("the sweep was interrupted; run it again, or `python -m engine jobs resume`")
        raise


def _worker_options() -> WorkerOptions:
    """A sweep's local workers by default: each logs to its own file, only warnings on the console."""
    return WorkerOptions(log_path=str(worker_log_dir() / "worker-{pid}.log"), console_level=logging.WARNING)
