"""Running sweeps: a local sweep runs its plan cheapest first and skips what is measured; a Dask cluster gives the
same rows as local workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import cache_sharing_data, use_cache

from engine import sweep
from engine.data import ImageData
from engine.methods import METHODS, three_step
from engine.pareto import accuracy_threshold_default
from engine.profiles import PROFILES
from engine.queue import JobQueue, Worker, WorkerOptions
from engine.store import ResultsStore
from engine.train import load_or_train_base

COMPARED = ("accuracy", "bits_actual", "bits_ideal", "bits_raw", "device_flops", "server_flops", "device_memory_bytes",
            "feature_shape", "base_test_accuracy", "png_bits", "test_images", "base_id", "dataset_fingerprint")


# -- running sweeps (smoke base model, trained once) -----------------------------------------------------------


@pytest.fixture()
def trained_cache(tmp_path: Path, tmp_cache: Path, shared_tar: Path, small_data: ImageData,
                  monkeypatch: pytest.MonkeyPatch) -> Path:
    load_or_train_base(PROFILES.get("smoke").base_config(small_data.fingerprint), small_data, tmp_cache)
    return use_cache(monkeypatch, cache_sharing_data(tmp_path, tmp_cache, ("data", "models")), shared_tar)


def test_local_sweep_runs_cheap_first_and_skips_what_is_measured(trained_cache: Path,
                                                                  small_data: ImageData) -> None:
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    planned = sweep.plan("smoke", base, os.environ["COINFER_DATA"], methods=["original"])
    queue, store = JobQueue(), ResultsStore()
    report = sweep.run(planned, queue=queue, store=store, workers=1, options=WorkerOptions(threads=2))
    assert [j.status for j in report.jobs] == ["done"] * 4, [j.error for j in report.jobs]  # 8 bits at 3, 4 at 1
    started = sorted(report.jobs, key=lambda j: j.started_at)
    assert [j.id for j in started] == [p.id for p in planned]  # one worker: strictly in priority order
    assert {r["id"] for r in store.rows()} == {p.id for p in planned}
    assert report.first_row_s is not None and 0 < report.first_row_s <= report.wall_s
    assert report.per_method()["original"] == {"variants": 4, "measured before": 0, "done": 4, "failed": 0,
                                               "cancelled": 0}
    again = sweep.run(planned, queue=queue, store=store, workers=1)
    assert again.jobs == [] and sorted(again.measured) == sorted(p.id for p in planned)


def test_a_dask_cluster_gives_the_same_rows_as_a_local_worker(trained_cache: Path, small_data: ImageData) -> None:
    distributed = pytest.importorskip("distributed")
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    planned = sweep.plan("smoke", base, os.environ["COINFER_DATA"], methods=["original"])
    planned = [p for p in planned if p.spec.split in ("device_only", "conv4_x")]

    local_queue, local_store = JobQueue(trained_cache / "local-jobs.sqlite"), ResultsStore(trained_cache / "l.sqlite")
    sweep.submit(local_queue, planned, local_store)
    Worker(local_queue, WorkerOptions(store_path=str(local_store.path), poll_s=0.05, max_jobs=3)).work()

    queue, store = JobQueue(trained_cache / "dask-jobs.sqlite"), ResultsStore(trained_cache / "d.sqlite")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", scheduler_port=0, dashboard_address=None) as cluster:
        report = sweep.run(planned, queue=queue, store=store, scheduler=cluster.scheduler_address)
    assert [j.status for j in report.jobs] == ["done"] * 3, [j.error for j in report.jobs]  # conv4_x at 8 and 4 bits
    assert all(j.worker.startswith("dask:tcp://127.0.0.1:") for j in report.jobs)
    for p in planned:
        local, remote = local_store.get(p.id), store.get(p.id)
        assert local is not None and remote is not None
        assert {k: remote[k] for k in COMPARED} == {k: local[k] for k in COMPARED}
    conv4 = store.get(next(p.id for p in planned if p.spec.split == "conv4_x"))
    assert conv4["bits_ideal"] <= conv4["bits_actual"] < conv4["bits_raw"] and conv4["device_flops"] > 0


def test_a_sweep_crosses_the_snapshots_that_hold_the_threshold_with_the_codings(trained_cache: Path,
                                                                                 small_data: ImageData) -> None:
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    data = os.environ["COINFER_DATA"]
    planned = sweep.plan("smoke", base, data, methods=["three_step"])
    store = ResultsStore()
    report = sweep.run(planned, queue=JobQueue(), store=store, workers=1, options=WorkerOptions(threads=2),
                       follow=lambda measured, planned: sweep.followups("smoke", base, measured, data,
                                                                        ["three_step"], exclude=planned))
    assert not report.failed, [j.error for j in report.failed]
    rows = {r["id"]: r for r in store.rows()}
    snapshots = [r for r in rows.values() if r["knobs"].get("bits") == 8 and isinstance(r["knobs"]["snapshot"], int)]
    holding = sorted(r["knobs"]["snapshot"] for r in snapshots if r["val_accuracy"] >= r["val_threshold"])
    crossed = [p for p in report.planned if p.id not in {q.id for q in planned}]
    assert all(p.id in rows for p in crossed)  # measured, as rows of their own
    # each holding snapshot and the unpruned split with every coding, but a learned one expected to miss (a measured
    # learned coding that reaches as far lost more there than the snapshot's margin allows)
    method, smoke = METHODS.get("three_step"), PROFILES.get("smoke")
    run = {k: v for k, v in snapshots[0]["knobs"].items() if k not in ("bits", "snapshot", "encoder")}
    lost = three_step._learned_losses([r for r in rows.values() if r["method"] == "three_step"])["conv4_x"]
    base_val = snapshots[0]["base_val_accuracy"]
    need = accuracy_threshold_default(base_val)
    for level in [*holding, "none"]:
        pruning = {"snapshot": "none"} if level == "none" else {**run, "snapshot": level}
        snap = None if level == "none" else next(r for r in snapshots if r["knobs"]["snapshot"] == level)
        flops = snapshots[0]["base_device_flops"] if snap is None else snap["device_flops"]
        margin = (base_val if snap is None else snap["val_accuracy"]) - need
        for coding in smoke.codings:
            v = method._coded("conv4_x", base, pruning, coding)
            missing = three_step._expected_to_miss(v, flops, margin, lost, smoke.encoding_epochs)
            assert (v.id in {p.id for p in crossed}) != missing, (level, coding)
    assert {p.spec.knobs["snapshot"] for p in crossed} <= {*holding, "none"}
    assert sweep.followups("smoke", base, store, data, ["three_step"]) == []  # nothing left to cross
