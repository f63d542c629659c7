"""A small study end to end on the smoke profile: trials run as jobs through the queue, a configuration measured
before costs nothing, a killed study resumes where its jobs are, and a hopeless trial is stopped by the pruner."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import cache_sharing_data, use_cache
from optuna.trial import TrialState

from engine import intermediate
from engine.data import ImageData
from engine.latency import DEVICES
from engine.models import END_POINTS
from engine.profiles import PROFILES
from engine.queue import JobQueue, Worker, WorkerOptions
from engine.search import Environment, Search, SearchConfig, trial_table
from engine.search.pruner import THRESHOLD_ATTR
from engine.search.space import probes
from engine.store import ResultsStore
from engine.train import load_or_train_base

PROBES = len(probes(PROFILES.get("smoke").base_config("any"), ["three_step"]))  # measured first in every study
OPTIONS = WorkerOptions(threads=2, poll_s=0.2, heartbeat_s=0.2)  # reports reach the study at once


@pytest.fixture()
def trained_cache(tmp_path: Path, tmp_cache: Path, shared_tar: Path, small_data: ImageData,
                  monkeypatch: pytest.MonkeyPatch) -> Path:
    load_or_train_base(PROFILES.get("smoke").base_config(small_data.fingerprint), small_data, tmp_cache)
    return use_cache(monkeypatch, cache_sharing_data(tmp_path, tmp_cache, ("data", "models")), shared_tar)


def _config(data: ImageData, rate_kbs: float, drop: float = 0.02) -> SearchConfig:
    base = PROFILES.get("smoke").base_config(data.fingerprint)
    env = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), rate_kbs * 8e3)
    return SearchConfig("smoke", base, env, drop=drop)


def test_a_study_runs_its_trials_as_jobs_and_resumes_after_a_kill(trained_cache: Path,
                                                                  small_data: ImageData) -> None:
    queue, store, data = JobQueue(), ResultsStore(), os.environ["COINFER_DATA"]
    cfg = _config(small_data, 40)
    search = Search(cfg, queue=queue, store=store, data=data)
    killed: list[int] = []

    def kill_with_a_trial_running(summary: object) -> None:
        running = queue.jobs(status="running", tag=cfg.name)
        if len(search.study.trials) >= 3 and running and not killed:
            killed.append(len(search.study.trials))
            raise KeyboardInterrupt  # what SIGTERM or Ctrl-C raises in the command

    with pytest.raises(KeyboardInterrupt):
        search.run(workers=1, trials=PROBES + 2, on_update=kill_with_a_trial_running, options=OPTIONS)
    left = [t for t in search.study.get_trials() if t.state == TrialState.RUNNING]
    assert killed and len(left) == 1 and left[0].user_attrs.get("variant_id")
    # its worker gave the job back, or finished it while the pool shut down: either way the resumed study tells it
    assert queue.get(left[0].user_attrs["variant_id"]).status in ("queued", "done")

    again = Search(cfg, queue=queue, store=store, data=data)  # the same command run again: the same study
    summary = again.run(workers=1, trials=PROBES + 2, options=OPTIONS)
    trials = again.study.get_trials()
    assert len(trials) == PROBES + 2 and summary.states.get("running") is None, summary.states
    assert trials[left[0].number].state.is_finished()  # the interrupted trial was told after the resume
    assert [t.user_attrs["split"] for t in trials[:2]] == list(END_POINTS)  # the baselines' end points first
    assert {t.user_attrs["knobs"].get("snapshot") for t in trials[2:PROBES]} == {"none"}  # then what trains nothing
    assert {t.user_attrs.get("planned_by") for t in trials[PROBES:]} == {"forecast"}  # then the planner's choices
    assert all(t.user_attrs["forecast_latency"] > 0 for t in trials[PROBES:])
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in done:  # each an ordinary row of the results store, tagged jobs of the study
        assert store.get(t.user_attrs["variant_id"]) is not None
        job = queue.get(t.user_attrs["variant_id"])
        assert job is None or job.tag == cfg.name or t.user_attrs["source"] == "results store"
    assert summary.best is not None and summary.best["feasible"]
    table = trial_table(trials)
    assert table["worker_minutes"].is_monotonic_increasing and table["best_latency"].notna().any()

    other = Search(_config(small_data, 10), queue=queue, store=store, data=data)  # another environment
    measured = {t.user_attrs["variant_id"] for t in done}
    first = other.run(workers=0, trials=2)  # the end points: both measured already, nothing queued
    assert first.states.get("complete") == 2 and "running" not in first.states
    reused = other.study.get_trials(states=(TrialState.COMPLETE,))
    assert {t.user_attrs["variant_id"] for t in reused} <= measured
    assert all(t.user_attrs["source"] == "results store" and t.user_attrs["worker_s"] == 0.0 for t in reused)


def test_a_trial_that_cannot_meet_the_threshold_is_stopped_and_kept_apart(
        trained_cache: Path, small_data: ImageData, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(small_data, 40)
    queue = JobQueue()
    search = Search(cfg, queue=queue, data=os.environ["COINFER_DATA"])
    search.study.set_user_attr(THRESHOLD_ATTR, 1.01)  # no pruning level can hold it
    search.study.enqueue_trial({"split": "conv4_x", "three_step.snapshot": "2", "three_step.target": 0.5,
                                "three_step.hold": 1, "three_step.output": "body", "three_step.coding": "uniform",
                                "three_step.bits": 8})
    # a smoke pruning run ends in well under a second, before the study looks again: the worker here runs in this
    # process and, after each level it reports, waits until its job is no longer plainly running (the study's
    # verdict), so the test sees the pruner act, not which of two clocks was faster
    original = intermediate.report

    def report_then_wait(kind: str, step: int, value: float) -> None:
        original(kind, step, value)
        if kind == intermediate.PRUNE_LEVEL:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                    j.status == "running" for j in queue.jobs(status="running", tag=cfg.name)):
                time.sleep(0.05)

    monkeypatch.setattr(intermediate, "report", report_then_wait)
    stop = threading.Event()
    worker = Worker(queue, dataclasses.replace(OPTIONS, tag=cfg.name))
    thread = threading.Thread(target=worker.work, args=(stop,), daemon=True)
    thread.start()
    try:
        summary = search.run(workers=0, trials=PROBES + 1, poll_s=0.1)
    finally:
        stop.set()
        thread.join(timeout=120)
        worker.close()
    pruned = [t for t in search.study.get_trials() if t.state == TrialState.PRUNED]
    assert len(pruned) == 1, summary.states
    t = pruned[0]
    assert t.user_attrs["partial"] and t.intermediate_values and t.user_attrs["reports"]["prune_level"]
    run_seconds = t.user_attrs["reports"]["prune_seconds"]  # the run's seconds: charged in full when it was cached
    assert run_seconds and t.user_attrs["charged_s"] >= max(run_seconds.values())
    assert set(t.intermediate_values) == {int(k) for k in t.user_attrs["reports"]["prune_level"]}  # no seconds there
    assert all(v < 1.01 for v in t.intermediate_values.values())
    assert summary.best is None or summary.best["number"] != t.number
    assert queue.get(t.user_attrs["variant_id"]).status in ("cancelled", "cancelling")


def test_a_study_runs_on_a_dask_cluster_and_its_trials_report_there_too(trained_cache: Path,
                                                                        small_data: ImageData) -> None:
    distributed = pytest.importorskip("distributed")
    cfg = _config(small_data, 40)
    search = Search(cfg, data=os.environ["COINFER_DATA"])
    search.study.enqueue_trial({"split": "conv4_x", "three_step.snapshot": "1", "three_step.target": 0.5,
                                "three_step.hold": 1, "three_step.output": "body", "three_step.coding": "uniform",
                                "three_step.bits": 4})
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", scheduler_port=0, dashboard_address=None) as cluster:
        summary = search.run(workers=1, trials=PROBES + 1, scheduler=cluster.scheduler_address, poll_s=0.2)
    trials = search.study.get_trials()
    assert summary.states.get("fail") is None and len(trials) == PROBES + 1, summary.states
    for t in trials:
        job = JobQueue().get(t.user_attrs["variant_id"])
        assert t.user_attrs.get("source") == "results store" or job.worker.startswith("dask:tcp://127.0.0.1:")
    pruned = trials[PROBES]
    assert pruned.user_attrs["split"] == "conv4_x" and pruned.state in (TrialState.COMPLETE, TrialState.PRUNED)
    job = JobQueue().get(pruned.user_attrs["variant_id"])
    if pruned.user_attrs.get("source") != "results store":  # its levels came back as events, kept with the job
        assert set(job.reports) == {"prune_level", "prune_seconds"} and "0" in job.reports["prune_level"]
        assert set(job.reports["prune_seconds"]) == set(job.reports["prune_level"])  # each level's run seconds too
        if pruned.state == TrialState.PRUNED:  # stopped at the first level below the threshold
            assert min(pruned.intermediate_values.values()) < search.study.user_attrs["threshold"]


def test_the_best_configuration_re_runs_with_more_seeds_and_shows_its_spread(trained_cache: Path,
                                                                             small_data: ImageData) -> None:
    from engine import sweep
    from engine.report import replicate_spread

    cfg = _config(small_data, 40, drop=1.0)  # any accuracy
    search = Search(cfg, data=os.environ["COINFER_DATA"])
    search.study.enqueue_trial({"split": "conv4_x", "three_step.snapshot": "0", "three_step.target": 0.5,
                                "three_step.hold": 1, "three_step.output": "body", "three_step.coding": "uniform",
                                "three_step.bits": 4})
    search.run(workers=1, trials=PROBES + 1, options=OPTIONS)
    pruned = search.study.get_trials()[PROBES]
    assert pruned.state == TrialState.COMPLETE and pruned.user_attrs["knobs"]["snapshot"] == 0
    best = search.summary().best
    if best["method"] == "original":  # an end point: nothing of it is seeded
        assert search.replicates(3) == []
    specs = search.replicates(3, pruned.number)
    assert [s.knobs.get("replicate") for s in specs] == [1, 2] and all(s.split == "conv4_x" for s in specs)
    sweep.run([sweep.Planned(s, 0) for s in specs], queue=search.queue, store=search.store, workers=1,
              options=OPTIONS)
    assert search.replicates(3, pruned.number) == []  # measured now
    spread = replicate_spread(search.store.rows(), pruned.user_attrs["variant_id"])
    assert spread["n"] == 3 and spread["deployed_val_accuracy_min"] <= spread["deployed_val_accuracy_max"]
    rows = [search.store.get(i) for i in spread["ids"]]
    runs = {r["prune_run"] for r in rows}
    assert len(runs) == 3  # each replicate trained its own pruning run, with its own seed
    assert spread["deployed_val_accuracy_std"] >= 0.0
