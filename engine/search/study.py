"""A search: an Optuna study (RDB storage on SQLite under the cache) whose trials are jobs of the job queue. The
study asks for a configuration, the queue runs it (this command's own worker processes, which claim only the study's
jobs, or workers started elsewhere), and its row lands in the results store like any other; a configuration measured
before, by the grid or another study, is told at once. Killing the command and running it again resumes the study:
its trials still running are picked up where their jobs are.

What a trial costs is counted in worker seconds the way the grid's are (`charged_seconds`): the seconds that measured
its row, and the pruning run it starts from once per study, so that a budget means the same for a search that finds
its rows measured already and for one that measures them.

A study run with `replay=True` (what `bench/bench_search.py` does on a copy of a sweep's cache) lets a configuration
measured before hold its worker for the seconds it is charged, on a clock of its own that runs with the jobs
measured meanwhile, instead of telling it at once: otherwise, beside one job that trains, the other workers take
every measured row the planner asks for and charge their minutes before that job can tell what it found, an order no
study on a cold store could run in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.pruners import NopPruner
from optuna.samplers import RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from engine import intermediate
from engine.coding.learned import EncodingConfig, is_learned
from engine.config import BaseModelConfig, VariantConfig, config_id
from engine.errors import UserError
from engine.methods import METHODS, check_variant
from engine.models import END_POINTS
from engine.pareto import DECISION_COLUMN
from engine.paths import cache_dir
from engine.profiles import PROFILES
from engine.queue import ACTIVE, Job, JobQueue, JobSpec, WorkerOptions, WorkerPool, worker_log_dir
from engine.queue.worker import shared_part
from engine.search.bound import PLANNER_VERSION, Measured, Planner, enumerate_space, params_key
from engine.search.objective import (
    CONSTRAINTS,
    OBJECTIVES,
    Environment,
    constraints,
    feasible,
    latency_of,
    objective_values,
    threshold_of,
)
from engine.search.pruner import (
    ENCODER_STEP,
    FINAL_ATTR,
    LAST_STEP_ATTR,
    THRESHOLD_ATTR,
    HopelessPruner,
    step_of,
)
from engine.search.space import SPACE_VERSION, probes, suggest_variant
from engine.store import ResultsStore

log = logging.getLogger(__name__)

SAMPLERS = ("auto", "forecast", "tpe")  # what proposes a study's trials (`SearchConfig.sampler`)
SEARCH_PRIORITY = -1000  # a study's jobs go before a sweep's in a shared queue
MAX_REPEATS = 50  # trials in a row that chose a configuration the study had measured: the space is exhausted
RUN_PAID_ATTR = "run_paid_s"  # a trial's user attribute: the seconds of its pruning run the study paid up to then
PAID_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials the study was charged for their pruning runs


def storage_path(cache: Path | None = None) -> Path:
    """The studies' database: one SQLite file under the cache."""
    return (cache_dir() if cache is None else cache) / "search" / "studies.sqlite"


def storage(cache: Path | None = None) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on the studies' database (created when missing)."""
    path = storage_path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 30}})


def study_names(cache: Path | None = None) -> list[str]:
    """The studies kept in the cache, oldest first."""
    if not storage_path(cache).exists():
        return []
    return [s.study_name for s in optuna.get_all_study_summaries(storage(cache), include_best_trial=False)]


@dataclass(frozen=True)
class SearchConfig:
    """What a study searches for: the base model's profile, the environment, the objective, the allowed accuracy drop
    (a fraction) and the methods whose choices it explores; its name is derived from all of them, so the same command
    resumes the same study.

    Args:
        profile: the profile whose budgets and `SearchSpace` apply; base: the base model; env: the environment;
        objective: "latency" or "front" (`OBJECTIVES`); drop: allowed validation-accuracy drop below the base model;
        methods: the methods searched; seed: the sampler's seed; sampler: what proposes the trials ("auto": the
        forecast planner for a latency study of `three_step`, else TPE; `SAMPLERS`).
    """

    profile: str
    base: BaseModelConfig
    env: Environment
    objective: str = "latency"
    drop: float = 0.02
    methods: tuple[str, ...] = ("three_step",)
    seed: int = 0
    sampler: str = "auto"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective is one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"--sampler is one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.sampler == "forecast" and not self.forecast_applies:
            raise UserError("--sampler forecast plans a latency study of three_step alone: use --sampler tpe")
        if not 0.0 <= self.drop <= 1.0:
            raise UserError(f"the accuracy drop is a fraction in [0, 1], got {self.drop:g}")
        for m in self.methods:
            METHODS.get(m)

    @property
    def forecast_applies(self) -> bool:
        """Whether the forecast planner can propose this study's trials (a latency study of `three_step`)."""
        return self.objective == "latency" and self.methods == ("three_step",)

    @property
    def proposer(self) -> str:
        """What proposes the trials: "forecast" (`engine.search.bound`) or "tpe"."""
        if self.sampler == "auto":
            return "forecast" if self.forecast_applies else "tpe"
        return self.sampler

    def key(self) -> dict[str, Any]:
        key = {"profile": self.profile, "base": self.base.id, "env": self.env.key(), "objective": self.objective,
               "drop": self.drop, "methods": list(self.methods), "seed": self.seed, "space": SPACE_VERSION,
               "choices": dataclasses.asdict(PROFILES.get(self.profile).search)}
        if self.proposer != "tpe":  # TPE studies keep the names they were created with
            key["sampler"] = self.proposer
            key["planner"] = PLANNER_VERSION
        return key

    @property
    def name(self) -> str:
        """The study's name: the objective and a hash of everything that defines the study."""
        return f"{self.objective}-{config_id(self.key())[:12]}"


def _sampler(seed: int) -> TPESampler:
    """TPE over the conditional space: multivariate, grouped by the choices a trial made (Optuna's experimental
    `group`, for define-by-run spaces like this one); constraints are the ones each trial sets."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return TPESampler(seed=seed, multivariate=True, group=True)


@dataclass
class _Pending:
    """A trial waiting on its job."""

    trial: optuna.Trial
    variant: VariantConfig
    levels: int  # pruning levels whose figures bear on it (those up to its snapshot)
    reported: set[int] = field(default_factory=set)
    start_v: float = 0.0  # the replay clock when it was submitted (`Search.run(replay=True)`)
    submitted: float = field(default_factory=time.time)


@dataclass
class _Due:
    """A replayed trial holding its worker until the replay clock reaches `end_v`: a row of the store, or a job
    that ended (told in the clock's order, not as it ended)."""

    end_v: float
    tell: Callable[[], None]


@dataclass
class SearchSummary:
    """Where a study stands: its trials by state, the charged and actual worker seconds, the best configuration."""

    name: str
    states: dict[str, int]
    charged_s: float
    worker_s: float
    wall_s: float
    best: dict[str, Any] | None
    stopped_because: str = ""


class Search:
    """One study and the loop that runs it through the job queue.

    Args:
        cfg: what it searches for.
        queue, store: the job table and the results store (default: the cache's).
        data: the dataset path its jobs are planned on.
        cache: the cache directory (its studies' database, the base model's checkpoint).
    """

    def __init__(self, cfg: SearchConfig, *, queue: JobQueue | None = None, store: ResultsStore | None = None,
                 data: str | None = None, cache: Path | None = None) -> None:
        self.cfg, self.data = cfg, data
        self.cache = cache_dir() if cache is None else cache
        self.queue = JobQueue() if queue is None else queue
        self.store = ResultsStore() if store is None else store
        self.storage = storage(self.cache)
        known = cfg.name in {s.study_name for s in optuna.get_all_study_summaries(self.storage, False)}
        self.study = optuna.create_study(
            storage=self.storage, study_name=cfg.name, load_if_exists=True,
            directions=list(OBJECTIVES[cfg.objective]), sampler=_sampler(cfg.seed),
            pruner=HopelessPruner() if cfg.objective == "latency" else NopPruner())
        if not known:
            self.study.set_user_attr("config", json.loads(json.dumps(cfg.key())))
            self.study.set_user_attr("profile", cfg.profile)
            for params in probes(cfg.base, cfg.methods):  # what trains nothing first: the end points, then each split
                self.study.enqueue_trial(params)
        # a fresh sampler seed per run, from the trials so far: a resumed study does not replay its first choices
        self.study.sampler = _sampler(cfg.seed + len(self.study.trials))
        self.pending: dict[int, _Pending] = {}
        self._repeats = 0  # trials in a row that chose a configuration the study had measured
        self._explore = False  # the next trial is drawn at random (the last one was a repeat)
        self._planner: Planner | None = None  # the forecast planner (built once the threshold is known)
        self._exhausted = False  # the planner forecasts no configuration left to beat the best
        self._budget_s = math.inf  # the run's budget: the planner proposes nothing forecast to overrun it
        self._replay = False  # measured configurations hold a worker for their charged seconds (`run`)
        self._clock = 0.0  # the replay clock: seconds since the run started, as a cold store would have run them
        self._due: list[_Due] = []  # replayed trials holding their workers

    # -- the loop ----------------------------------------------------------------------------------------------

    def run(self, *, workers: int = 1, budget_s: float | None = None, trials: int | None = None,
            on_update: Callable[[SearchSummary], None] | None = None, poll_s: float = 1.0,
            options: WorkerOptions | None = None, scheduler: str | Any | None = None,
            replay: bool = False) -> SearchSummary:
        """Run the study until its budget or trial count is spent (each counted over the study's whole life, so a
        rerun goes on where the last stopped), then wait for its trials in flight.

        Args:
            workers: local worker processes that claim only this study's jobs (0: only queue them for workers started
                elsewhere); as many trials are in flight (with `scheduler`, the trials in flight on the cluster).
            budget_s: charged worker seconds the study may spend (None: no limit).
            trials: trials the study may hold (None: no limit); one of budget_s and trials is needed.
            on_update: called with the summary as trials finish.
            poll_s: seconds between looks at the job table.
            options: the local workers' (log file, threads).
            scheduler: run the trials on this Dask cluster (an address or a `distributed.Client`) instead.
            replay: a configuration the store holds takes its worker for the seconds it is charged, as it would on a
                cold store, and what ends is told in that order (see the module's docstring); for a benchmark.
        Returns:
            the study's summary at the end.
        """
        if budget_s is None and trials is None:
            raise UserError("give the search a budget (--budget 45min) or a number of trials (--trials 20)")
        start = time.perf_counter()
        self._budget_s = math.inf if budget_s is None else float(budget_s)
        self._threshold()
        self._resume()
        capacity = max(1, workers)
        why: list[str] = []
        self._replay, self._clock, self._due = replay, 0.0, []
        if replay:
            self.study.set_user_attr("replayed", True)

        def step() -> bool:
            self._poll()
            while True:
                reason = self._spent(budget_s, trials)
                if reason is None:
                    self._ask(capacity, trials)
                elif not why:
                    why.append(reason)
                if not self._release():
                    break
            if on_update is not None:
                on_update(self.summary(time.perf_counter() - start))
            return reason is not None and not self.pending and not self._due

        if scheduler is not None:
            self._run_dask(scheduler, step, poll_s)
        elif workers > 0:
            if self.queue.resume():
                log.info("the job queue was paused; running a search resumes it")
            options = options or WorkerOptions(log_path=str(worker_log_dir() / "worker-{pid}.log"),
                                               console_level=logging.WARNING)
            pool = WorkerPool(self.queue, workers, dataclasses.replace(options, tag=self.cfg.name,
                                                                       store_path=str(self.store.path)))
            pool.run(until=step, interval=poll_s)
        else:
            while not step():
                time.sleep(poll_s)
        summary = self.summary(time.perf_counter() - start)
        summary.stopped_because = why[0] if why else ""
        return summary

    def _run_dask(self, scheduler: str | Any, step: Callable[[], bool], poll_s: float) -> None:
        """The loop on a Dask cluster: each step sends the trials' queued jobs and settles the ended ones."""
        from engine.queue.dask import DaskExecutor, connect

        client, own = connect(scheduler)
        executor = DaskExecutor(self.queue, self.store, client)
        executor.start()
        try:
            while True:
                _, moved = executor.step([p.variant.id for p in self.pending.values()])
                if step():
                    break
                if not moved:
                    time.sleep(poll_s)
        finally:
            executor.stop()
            if own:
                client.close()

    def _spent(self, budget_s: float | None, trials: int | None) -> str | None:
        """Why no more trials are asked for (None: more may be)."""
        if self._repeats >= MAX_REPEATS:
            return f"{MAX_REPEATS} trials in a row chose configurations measured already: the space looks exhausted"
        if self._exhausted and not self._busy() and self._planner is not None and self._planner.over_budget:
            left = max(0.0, self._budget_s - self.charged_seconds())
            return f"the {left / 60:.1f} worker minutes left are fewer than any useful configuration's forecast cost"
        if self._exhausted and not self._busy():
            best = best_trial(self.study.get_trials(deepcopy=False))
            at = f" ({best['latency'] * 1e3:.2f} ms)" if best and isinstance(best.get("latency"), float) else ""
            return f"no configuration left is forecast to beat the best{at}"
        if trials is not None and self._held() >= trials:
            return f"{trials} trials"
        if budget_s is not None and self.charged_seconds(running=True) >= budget_s:
            return f"the budget of {budget_s / 60:g} worker minutes"
        return None

    def _ask(self, capacity: int, trials: int | None) -> None:
        """Ask for trials until `capacity` wait on jobs or the study holds `trials`; those measured before are
        told at once. A trial that chooses a configuration the study has measured is told as a repeat (failed, never
        charged, left out of the sampler's view), and the next trial is drawn at random: TPE that has found a
        configuration with nothing left to choose (an end point) would otherwise propose it again and again."""
        told = 0
        while (len(self.pending) + len(self._due) < capacity and told < MAX_REPEATS and self._repeats < MAX_REPEATS
               and (trials is None or self._held() < trials)):
            tpe = self.study.sampler
            if self._explore:
                self.study.sampler = RandomSampler(seed=self.cfg.seed + len(self.study.trials))
            reference = self._held() < len(END_POINTS)  # a study's first trials: its enqueued end points
            if self.cfg.proposer == "forecast" and not reference and not self._waiting() and not self._plan():
                break
            try:
                trial = self.study.ask()
                variant = suggest_variant(trial, self.cfg.base, self.cfg.methods, reference=reference)
                check_variant(variant, self.cfg.profile)
            except UserError as exc:
                trial.set_user_attr("error", str(exc))
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            finally:
                self.study.sampler = tpe
            self._describe(trial, variant)
            first = next((t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                          if t.user_attrs.get("variant_id") == variant.id), None)
            self._explore = first is not None
            if first is not None:
                self._repeats += 1
                for k, v in {"repeat_of": first, "charged_s": 0.0, "worker_s": 0.0,
                             "error": f"a repeat of trial {first}: measured already"}.items():
                    trial.set_user_attr(k, v)
                self.study.tell(trial, state=TrialState.FAIL)
                told += 1
                continue
            self._repeats = 0
            row = self.store.get(variant.id)
            if row is not None:
                if self._replay:  # it holds a worker for its charged seconds, as on a cold store
                    self._hold(self._charge(row), partial(self._finish, trial, row, 0.0, "results store"))
                else:
                    self._finish(trial, row, worker_s=0.0, source="results store")
                    told += 1
                continue
            self._submit(trial, variant)

    def _busy(self) -> bool:
        """Whether a trial holds a worker: a job pending, or a replayed trial not told yet."""
        return bool(self.pending or self._due)

    def _hold(self, seconds: float, tell: Callable[[], None], start_v: float | None = None) -> None:
        """Replay: a trial takes its worker from `start_v` (the clock now) for `seconds`, told when the clock
        reaches its end."""
        start_v = self._clock if start_v is None else start_v
        self._due.append(_Due(start_v + max(0.0, seconds), tell))

    def _release(self) -> bool:
        """Replay: tell the replayed trial that ends first, if the clock may reach it: no job still running
        started early enough on the clock to end before it. True when one was told (a worker is free)."""
        if not self._due:
            return False
        now = time.time()
        horizon = min((p.start_v + now - p.submitted for p in self.pending.values()), default=math.inf)
        first = min(self._due, key=lambda d: d.end_v)
        if first.end_v > horizon:
            return False
        self._due.remove(first)
        self._clock = max(self._clock, first.end_v)
        first.tell()
        return True

    def _waiting(self) -> bool:
        """Whether enqueued trials wait to be asked (the end points, the probes, a planned one)."""
        return any(t.state == TrialState.WAITING for t in self.study.get_trials(deepcopy=False))

    def _plan(self) -> bool:
        """Enqueue the forecast planner's next configuration (`engine.search.bound`); False when it has none now:
        those left wait on trials in flight, or none is forecast to beat the best (`_exhausted`)."""
        threshold = self.study.user_attrs.get(THRESHOLD_ATTR)
        if not isinstance(threshold, int | float):
            return False  # the base model's validation accuracy is not known yet
        if self._planner is None:
            space = enumerate_space(lambda chooser: suggest_variant(chooser, self.cfg.base, self.cfg.methods))
            self._planner = Planner(space, self.cfg.profile, self.cfg.env, float(threshold))
        trials = self.study.get_trials(deepcopy=False)
        measured: dict[tuple, Measured] = {}
        for t in trials:
            key = params_key(t.params)
            shape = self._planner.shapes.get(key)
            if shape is None or not t.state.is_finished():
                continue
            row = self.store.get(str(t.user_attrs.get("variant_id"))) if t.state == TrialState.COMPLETE else None
            levels = {int(k): float(v) for k, v in t.intermediate_values.items() if k < ENCODER_STEP}
            charged = t.user_attrs.get("charged_s")
            measured[key] = Measured(shape, row, levels, stopped=t.state == TrialState.PRUNED,
                                     seconds=float(charged) if isinstance(charged, int | float) else math.nan)
        running = {params_key(t.params) for t in trials if t.state == TrialState.RUNNING}
        best = best_trial(trials)
        best_latency = float(best["latency"]) if best and isinstance(best.get("latency"), float) else math.inf
        choice, self._exhausted = self._planner.next(measured, running, best_latency,
                                                     self._budget_s - self.charged_seconds())
        if choice is None:
            return False
        self.study.enqueue_trial(dict(choice.candidate.params), user_attrs={
            "planned_by": "forecast", "forecast_latency": choice.latency, "forecast_bits": choice.bits,
            "forecast_val": choice.val})
        return True

    def _held(self) -> int:
        """The trials asked so far (those enqueued and not asked yet wait outside the count)."""
        return sum(t.state != TrialState.WAITING for t in self.study.get_trials(deepcopy=False))

    def _describe(self, trial: optuna.Trial, variant: VariantConfig) -> None:
        trial.set_user_attr("variant_id", variant.id)
        trial.set_user_attr("method", variant.method)
        trial.set_user_attr("split", variant.split)
        trial.set_user_attr("knobs", json.loads(json.dumps(dict(variant.knobs))))
        if (epochs := _encoder_epochs(variant, self.cfg.profile)) is not None:
            trial.set_user_attr(LAST_STEP_ATTR, step_of(intermediate.ENCODER_EPOCH, epochs))

    def _submit(self, trial: optuna.Trial, variant: VariantConfig) -> None:
        spec = JobSpec.for_variant(variant, self.cfg.profile, self.data)
        self.queue.submit([spec], SEARCH_PRIORITY, requeue_finished=True, tag=self.cfg.name)
        self.pending[trial.number] = _Pending(trial, variant, _levels(variant), start_v=self._clock)

    def _resume(self) -> None:
        """Pick up the trials a killed run left running: those with a variant wait on its job (queued again when it
        is not active), the others failed before their variant was chosen."""
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number in self.pending:
                continue
            vid = frozen.user_attrs.get("variant_id")
            trial = optuna.Trial(self.study, frozen._trial_id)
            if vid is None:
                trial.set_user_attr("error", "interrupted before its configuration was chosen")
                self.study.tell(frozen.number, state=TrialState.FAIL)
                continue
            job = self.queue.get(vid)
            spec = job.spec if job is not None else None
            variant = spec.variant() if spec is not None else VariantConfig.make(
                str(frozen.user_attrs["method"]), str(frozen.user_attrs["split"]), self.cfg.base,
                **frozen.user_attrs.get("knobs", {}))
            if (row := self.store.get(vid)) is not None:
                self._finish(trial, row, worker_s=_job_seconds(job), source="job")
            elif job is not None and job.status in ACTIVE:
                self.pending[frozen.number] = _Pending(trial, variant, _levels(variant),
                                                       set(frozen.intermediate_values))
                self.queue.submit([job.spec], SEARCH_PRIORITY, tag=self.cfg.name)
            else:
                self._submit(trial, variant)

    def _poll(self) -> None:
        """Tell the trials whose jobs ended; report what running ones measured and stop the hopeless."""
        if not self.pending:
            return
        jobs = {j.id: j for j in self.queue.jobs([p.variant.id for p in self.pending.values()])}
        for number, p in list(self.pending.items()):
            job = jobs.get(p.variant.id)
            if job is None:  # removed from the table meanwhile: queue it again
                del self.pending[number]
                self._submit(p.trial, p.variant)
                continue
            if job.status == "done":
                del self.pending[number]
                row = self.store.get(p.variant.id)
                if row is None:
                    self._fail(p, job, "its job finished without a row in the results store")
                elif self._replay:  # told when the clock reaches its end, after what ended before it
                    held = max(self._charge(row), (job.finished_at or time.time()) - p.submitted)
                    self._hold(held, partial(self._finish, p.trial, row, _job_seconds(job), "job"), start_v=p.start_v)
                else:
                    self._finish(p.trial, row, worker_s=_job_seconds(job), source="job")
            elif job.status in ("failed", "cancelled"):
                del self.pending[number]
                self._fail(p, job, job.error or job.status)
            elif self._report(p, job):
                del self.pending[number]
                self._stop(p, job)

    def _report(self, p: _Pending, job: Job) -> bool:
        """Report the job's new figures to its trial; True when the study's pruner says stop (latency only: Optuna
        prunes single-objective studies)."""
        if self.cfg.objective != "latency" or not job.reports:
            return False
        new = []
        for kind, by_step in job.reports.items():
            if kind == intermediate.PRUNE_SECONDS:  # seconds, not an accuracy: what `_stop` charges
                continue
            for k, value in by_step.items():
                step = step_of(kind, int(k))
                if step in p.reported or (kind == intermediate.PRUNE_LEVEL and int(k) >= p.levels):
                    continue  # a level past the trial's snapshot does not bear on it
                new.append((step, float(value)))
        for step, value in sorted(new):
            p.trial.report(value, step)
            p.reported.add(step)
            if p.trial.should_prune():
                return True
        return False

    def _stop(self, p: _Pending, job: Job) -> None:
        """Prune a trial: keep what it measured as its partial figures, and cancel its job unless another trial of
        the study waits on the same configuration."""
        shared = any(q.variant.id == p.variant.id for q in self.pending.values())
        if not shared and job.status in ACTIVE:
            self.queue.cancel(job.id)
        elapsed = time.time() - job.started_at if job.started_at else 0.0
        if self._replay:  # its worker is free once the clock has run what it is charged, told in the clock's order
            held = max(self._stopped_charge(p, job, elapsed)[0], time.time() - p.submitted)
            self._hold(held, partial(self._tell_stopped, p, job, elapsed), start_v=p.start_v)
        else:
            self._tell_stopped(p, job, elapsed)

    def _stopped_charge(self, p: _Pending, job: Job, elapsed: float) -> tuple[float, str | None, float, float]:
        """What a stopped trial is charged: its pruning run's training seconds up to the levels the trial saw, less
        what the study paid of that run already (a run read from the cache or resumed is charged as a complete row's
        run is), never less than the job's own time; a run the study paid for is not charged again. Returns the
        charge, the run (the queue's `shared_part`), its seconds up to those levels and what the study paid of it."""
        run_s = max([float(v) for k, v in (job.reports or {}).get(intermediate.PRUNE_SECONDS, {}).items()
                     if int(k) < max(1, p.levels)], default=0.0)
        run = shared_part(job.spec)
        paid = self._run_paid(run, self.study.get_trials(deepcopy=False, states=PAID_STATES))
        return max(elapsed, run_s - paid), run, run_s, paid

    def _tell_stopped(self, p: _Pending, job: Job, elapsed: float) -> None:
        """Tell a stopped trial, charged what it trained (`_stopped_charge`)."""
        charged, run, run_s, paid = self._stopped_charge(p, job, elapsed)
        p.trial.set_user_attr("partial", True)
        p.trial.set_user_attr("charged_s", charged)
        p.trial.set_user_attr("prune_run", run)
        p.trial.set_user_attr(RUN_PAID_ATTR, max(paid, run_s))
        p.trial.set_user_attr("worker_s", elapsed)
        p.trial.set_user_attr("reports", job.reports or {})
        self.study.tell(p.trial, state=TrialState.PRUNED)
        log.info("trial %d (%s) stopped: it can no longer meet the threshold", p.trial.number, p.variant.id)

    def _fail(self, p: _Pending, job: Job, error: str) -> None:
        seconds = _job_seconds(job)
        p.trial.set_user_attr("error", error)
        p.trial.set_user_attr("charged_s", seconds)
        p.trial.set_user_attr("worker_s", seconds)
        self.study.tell(p.trial, state=TrialState.FAIL)

    def _finish(self, trial: optuna.Trial, row: Mapping[str, Any], worker_s: float, source: str) -> None:
        """Tell a trial its row's values, with its constraints and the figures the pages show as user attributes."""
        env, cfg = self.cfg.env, self.cfg
        values = objective_values(row, env, cfg.objective)
        cons = constraints(row, env, cfg.drop)
        lat = latency_of(row, env)
        run = row.get("prune_run")
        finished = self.study.get_trials(deepcopy=False, states=PAID_STATES)
        paid, charged = self._run_paid(run, finished), self._charge(row, finished)
        attrs = {"constraints": cons, "feasible": feasible(cons), FINAL_ATTR: _float(row.get(DECISION_COLUMN)),
                 "test_accuracy": _float(row.get("accuracy")), "bits": _float(row.get("bits_actual")),
                 "device_flops": _float(row.get("device_flops")), "latency": lat["latency"],
                 "t_device": lat["t_device"], "t_transmit": lat["t_transmit"], "t_server": lat["t_server"],
                 "charged_s": charged, "worker_s": float(worker_s), "source": source, "prune_run": run,
                 RUN_PAID_ATTR: max(paid, _float(row.get("prune_seconds")) or 0.0) if run else 0.0}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if self._replay:
            trial.set_user_attr("replay_clock_s", self._clock)
        if cfg.objective == "latency":
            for name, value in zip(CONSTRAINTS, cons, strict=True):
                trial.set_constraint(name, value)
        if THRESHOLD_ATTR not in self.study.user_attrs and math.isfinite(threshold_of(row, cfg.drop)):
            self.study.set_user_attr(THRESHOLD_ATTR, threshold_of(row, cfg.drop))
        self.study.tell(trial, values)

    def _charge(self, row: Mapping[str, Any], finished: list[FrozenTrial] | None = None) -> float:
        """What telling `row` now charges the study (`charged_seconds`): nothing for a row it paid for already, its
        pruning run less what the study paid of that run (`finished`: the study's `PAID_STATES` trials, if read)."""
        if finished is None:
            finished = self.study.get_trials(deepcopy=False, states=PAID_STATES)
        done = [t for t in finished if t.state == TrialState.COMPLETE]
        if row.get("id") in {t.user_attrs.get("variant_id") for t in done}:  # the study paid for it already
            return 0.0
        return charged_seconds(row, True, self._run_paid(row.get("prune_run"), finished))

    @staticmethod
    def _run_paid(run: str | None, finished: Iterable[FrozenTrial]) -> float:
        """The seconds of pruning run `run` the study has charged already: the most any of its `finished` trials
        (`PAID_STATES`) of that run paid up to (a complete trial's row, the whole run; a stopped trial, its levels up
        to its snapshot)."""
        if not run:
            return 0.0
        return max((float(t.user_attrs.get(RUN_PAID_ATTR, math.inf)) for t in finished
                    if t.user_attrs.get("prune_run") == run), default=0.0)

    def _threshold(self) -> None:
        """Record the study's validation threshold once the base model's validation accuracy is known (a row of
        the base, or its checkpoint)."""
        if THRESHOLD_ATTR in self.study.user_attrs:
            return
        base_val = next((r.get("base_val_accuracy") for r in self.store.rows()
                         if r.get("base_id") == self.cfg.base.id and r.get("base_val_accuracy") is not None), None)
        if base_val is None:
            from engine.train import base_checkpoint_path
            from engine.training import load_checkpoint

            path = base_checkpoint_path(self.cfg.base, self.cache)
            ckpt = load_checkpoint(path) if path.exists() else None
            base_val = (ckpt or {}).get("metrics", {}).get("val_accuracy")
        if isinstance(base_val, int | float):
            self.study.set_user_attr(THRESHOLD_ATTR, float(base_val) - self.cfg.drop)

    def replicates(self, seeds: int, number: int | None = None) -> list[JobSpec]:
        """The best configuration (or trial `number`'s) re-run with more training seeds: the jobs of its replicates
        1 .. seeds - 1 (its own row is replicate 0), for a mean and spread of its accuracy
        (`engine.report.replicate_spread`). [] when there is no such trial, or it trains nothing (an end point or
        `original`: nothing of it is seeded).

        Args:
            seeds: the configuration's rows wanted in all, its own included.
            number: a finished trial's number (None: the best feasible trial).
        Returns:
            the specs of the replicates not measured yet.
        """
        trials = self.study.get_trials(deepcopy=False)
        if number is None:
            best = best_trial(trials)
        else:
            t = next((t for t in trials if t.number == number and t.state == TrialState.COMPLETE), None)
            best = None if t is None else {**t.user_attrs}
        if best is None or best["method"] == "original" or seeds < 2:
            return []
        variant = VariantConfig.make(best["method"], best["split"], self.cfg.base, **best["knobs"])
        specs = [JobSpec.for_variant(variant.replicate(k), self.cfg.profile, self.data) for k in range(1, seeds)]
        for spec in specs:
            check_variant(spec.variant(), self.cfg.profile)
        return [s for s in specs if s.id not in self.store]

    # -- reading -------------------------------------------------------------------------------------------------

    def charged_seconds(self, running: bool = False) -> float:
        """Worker seconds charged to the study's finished trials (and, with `running`, those its running jobs have
        spent so far)."""
        total = sum(float(t.user_attrs.get("charged_s", 0.0)) for t in self.study.get_trials(deepcopy=False)
                    if t.state.is_finished())
        if running and self.pending:
            now = time.time()
            total += sum(now - j.started_at for j in self.queue.jobs([p.variant.id for p in self.pending.values()],
                                                                    reap=False)
                         if j.status == "running" and j.started_at)
        return total

    def summary(self, wall_s: float = 0.0) -> SearchSummary:
        trials = self.study.get_trials(deepcopy=False)
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        worker = sum(float(t.user_attrs.get("worker_s", 0.0)) for t in trials if t.state.is_finished())
        return SearchSummary(self.cfg.name, states, self.charged_seconds(), worker, wall_s, best_trial(trials))


def _levels(variant: VariantConfig) -> int:
    """The pruning levels whose reported figures bear on a trial: those up to its snapshot (0 when unpruned)."""
    snapshot = variant.knob("snapshot")
    return int(snapshot) + 1 if isinstance(snapshot, int) and not isinstance(snapshot, bool) else 0


def _encoder_epochs(variant: VariantConfig, profile: str) -> int | None:
    """The epochs a trial's learned encoder trains (its `enc_epochs`, else the profile's), None without one."""
    if not is_learned(variant.knob("encoder", "none")):
        return None
    return EncodingConfig.from_knobs(variant.knobs).epochs or PROFILES.get(profile).encoding_epochs


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _job_seconds(job: Job | None) -> float:
    """The seconds a job's last attempt ran (0 when unknown)."""
    if job is None or not job.started_at:
        return 0.0
    return max(0.0, (job.finished_at or time.time()) - job.started_at)


def charged_seconds(row: Mapping[str, Any], new_run: bool, paid_s: float = 0.0) -> float:
    """What a row costs a study, counted as a sweep's worker time is: the seconds its measurement took (training its
    encoder included) and, the first time the study uses it, the seconds of its pruning run (less what the study
    paid of that run already, for a trial stopped at an earlier level). The base model is shared by every study and
    sweep of it and is not counted; a row the study chose before is not charged again.

    Args:
        row: a results row; new_run: whether its pruning run is charged with it; paid_s: the seconds of that run
            the study paid already.
    Returns:
        seconds.
    """
    seconds = _float(row.get("eval_seconds")) or 0.0
    if new_run:
        seconds += max(0.0, (_float(row.get("prune_seconds")) or 0.0) - paid_s)
    return seconds


def best_trial(trials: Iterable[FrozenTrial]) -> dict[str, Any] | None:
    """The best finished trial that meets its constraints: lowest latency for a latency study (fewer device FLOPs on a
    tie); for a front study, the most accurate one on the front. None when none qualifies."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("feasible", True)]
    if not done:
        return None
    if len(done[0].values) == 1:
        best = min(done, key=lambda t: (t.values[0], t.user_attrs.get("device_flops") or 0.0, t.number))
    else:
        best = max(done, key=lambda t: (t.values[2], -t.values[1], -t.number))
    return {"number": best.number, "values": list(best.values), **best.user_attrs, "params": dict(best.params)}


def trial_table(trials: Iterable[FrozenTrial]) -> pd.DataFrame:
    """One line per trial, in order: its state, configuration, figures, cost, and, for a latency study, the best
    feasible latency so far against the charged worker minutes so far (the search's progress curve).

    Args:
        trials: the study's trials (`study.get_trials()`).
    Returns:
        a table with columns number, state, method, split, knobs, variant_id, latency, forecast (the planner's
        forecast latency, None for a trial it did not propose), validation, test, bits, device_flops, feasible,
        charged_s, worker_minutes (cumulative), best_latency, source, error.
    """
    rows, spent, best = [], 0.0, math.inf
    for t in sorted(trials, key=lambda t: t.number):
        a = t.user_attrs
        spent += float(a.get("charged_s", 0.0)) if t.state.is_finished() else 0.0
        ok = t.state == TrialState.COMPLETE and bool(a.get("feasible", False))
        if ok and isinstance(a.get("latency"), int | float):  # a front study's trials carry their latency too
            best = min(best, float(a["latency"]))
        rows.append({"number": t.number, "state": t.state.name.lower(), "method": a.get("method"),
                     "split": a.get("split"), "knobs": a.get("knobs"), "variant_id": a.get("variant_id"),
                     "latency": a.get("latency"), "forecast": a.get("forecast_latency"),
                     "validation": a.get(FINAL_ATTR), "test": a.get("test_accuracy"),
                     "bits": a.get("bits"), "device_flops": a.get("device_flops"),
                     "feasible": a.get("feasible"), "charged_s": a.get("charged_s"), "worker_minutes": spent / 60,
                     "best_latency": best if math.isfinite(best) else None, "source": a.get("source"),
                     "error": a.get("error")})
    return pd.DataFrame(rows)
