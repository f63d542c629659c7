"""The job queue: one job per variant id, atomic claims, leases that expire, cooperative cancel and a hard kill
after the grace period, retry, failures that keep their error, and a worker SIGKILLed mid-training whose job
returns to the queue, resumes and finishes with exactly one row."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import cache_sharing_data, use_cache
from streamlit.testing.v1 import AppTest

import engine.queue as jobs_mod
from engine.cli import main
from engine.config import BaseModelConfig, VariantConfig
from engine.data import ImageData
from engine.errors import UserError
from engine.methods import METHODS, base_row
from engine.profiles import PROFILES
from engine.queue import JobQueue, JobSpec, Worker, WorkerOptions, start_worker_process
from engine.store import ResultsStore
from engine.sweep import one_variant
from engine.train import base_checkpoint_path, load_or_train_base

DASHBOARD = str(Path(__file__).resolve().parents[2] / "dashboard.py")
FAKE_BASE = BaseModelConfig(dataset="fake-fingerprint", width=0.125, epochs=1)


def spec(split: str = "conv4_x", **knobs: object) -> JobSpec:
    return JobSpec.for_variant(VariantConfig.make("original", split, FAKE_BASE, bits=8, **knobs), "smoke", None)


def test_a_worker_passes_over_a_job_whose_pruning_run_another_job_trains(tmp_path: Path) -> None:
    """Two levels of one `three_step` pruning run: the second worker starts the next job in line that needs no run
    in flight rather than wait on the first's lock; with nothing else queued it takes the level."""
    from engine.queue.worker import shared_part

    queue = JobQueue(tmp_path / "jobs.sqlite")
    level = [JobSpec.for_variant(VariantConfig.make("three_step", "conv4_x", FAKE_BASE, bits=8, snapshot=k), "smoke",
                                 None) for k in (0, 1)]
    other = JobSpec.for_variant(VariantConfig.make("three_step", "conv3_x", FAKE_BASE, bits=8, snapshot=0), "smoke",
                                None)
    unpruned = spec("conv4_x")
    assert shared_part(level[0]) == shared_part(level[1]) != shared_part(other) and shared_part(unpruned) is None
    queue.submit([level[0], level[1], other, unpruned], priority=[0, 1, 2, 3])
    assert queue.claim("w1", 1, shares=shared_part).id == level[0].id
    assert queue.claim("w2", 2, shares=shared_part).id == other.id  # level 1 would wait on w1's run
    assert queue.claim("w3", 3, shares=shared_part).id == unpruned.id
    assert queue.claim("w4", 4, shares=shared_part).id == level[1].id  # nothing else left
    fresh = JobQueue(tmp_path / "plain.sqlite")  # without `shares`, the line's order alone
    fresh.submit([level[0], level[1], other], priority=[0, 1, 2])
    assert [fresh.claim(f"w{n}", n).id for n in (1, 2)] == [level[0].id, level[1].id]


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def running(queue: JobQueue, job_id: str) -> jobs_mod.Job:
    """The job, which must not have failed (a failure ends the wait with its error)."""
    job = queue.get(job_id)
    assert job.status != "failed", job.error
    return job


@pytest.fixture(scope="module")
def smoke_models(small_data: ImageData, tmp_cache: Path) -> Path:
    """The smoke base model, trained once into the session cache."""
    load_or_train_base(PROFILES.get("smoke").base_config(small_data.fingerprint), small_data, tmp_cache)
    return tmp_cache / "models"


@pytest.fixture()
def qenv(tmp_path: Path, tmp_cache: Path, shared_tar: Path, cifar: ImageData, smoke_models: Path,
         monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache (job queue, results store) reusing the decoded data and the trained smoke base model."""
    return use_cache(monkeypatch, cache_sharing_data(tmp_path, tmp_cache, ("data", "models")), shared_tar)


# -- the table ---------------------------------------------------------------------------------------------


def test_spec_round_trips_to_the_same_variant_id() -> None:
    s = spec("conv3_x", levels=(0.25, 0.5))
    again = JobSpec.from_json(s.to_json())
    assert again.id == s.id == VariantConfig.make("original", "conv3_x", FAKE_BASE, bits=8, levels=(0.25, 0.5)).id
    assert again.variant().knob("levels") == (0.25, 0.5)  # JSON lists come back as tuples
    assert again.base_id == FAKE_BASE.id and again.width == 0.125


def test_submitting_the_same_variant_twice_queues_it_once(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite")
    specs = [spec(s) for s in ("stem", "conv4_x", "device_only")]
    barrier = threading.Barrier(4)

    def session() -> None:
        barrier.wait()
        JobQueue(queue.path).submit(specs)

    threads = [threading.Thread(target=session) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = queue.jobs()
    assert sorted(j.id for j in jobs) == sorted(s.id for s in specs)
    assert {j.status for j in jobs} == {"queued"}
    job = queue.claim("w", 1)
    queue.submit(specs)  # a running job is left alone
    assert queue.get(job.id).status == "running" and queue.get(job.id).lease == job.lease


def test_claims_are_atomic_and_follow_priority(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite")
    specs = [spec(s, bits_extra=i) for i, s in enumerate(["stem", "conv2_x", "conv3_x"] * 4)]
    queue.submit(specs, priority=list(range(len(specs)))[::-1])  # the last spec has priority 0: claimed first
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        q = JobQueue(queue.path)
        while (job := q.claim(f"w{n}", n)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(s.id for s in specs)  # each job exactly once
    assert {j.attempts for j in queue.jobs()} == {1}
    fresh = JobQueue(tmp_path / "other.sqlite")
    fresh.submit(specs, priority=list(range(len(specs)))[::-1])
    assert fresh.claim("w", 1).id == specs[-1].id


def test_an_expired_lease_requeues_the_job_and_the_old_worker_cannot_finish_it(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite")
    (s,) = [spec()]
    queue.submit([s])
    first = queue.claim("w1", 111, lease_s=5.0)
    assert queue.reap(now=first.heartbeat + 4.0) == []  # not expired yet
    assert queue.reap(now=first.heartbeat + 6.0) == [s.id]
    job = queue.get(s.id)
    assert job.status == "queued" and "stopped heart-beating" in job.message and job.attempts == 1
    second = queue.claim("w2", 222, lease_s=5.0)
    assert second.attempts == 2 and second.lease != first.lease
    assert queue.heartbeat(s.id, first.lease) is None  # the presumed-dead worker learns it lost the job
    assert not queue.complete(s.id, first.lease, {"accuracy": 0.5})
    assert queue.complete(s.id, second.lease, {"accuracy": 0.25})
    job = queue.get(s.id)
    assert job.status == "done" and job.result == {"accuracy": 0.25} and job.worker_pid == 222


@pytest.mark.parametrize("orphaned", [True, False])
def test_an_idle_worker_waits_one_lease_for_a_dead_worker_s_job(tmp_path: Path, orphaned: bool) -> None:
    """With an idle exit shorter than the lease, a worker still takes over a job whose worker died (it becomes
    claimable when its lease expires); with nothing running it exits after its idle time."""
    queue = JobQueue(tmp_path / "jobs.sqlite")
    s = spec()
    if orphaned:
        queue.submit([s])
        queue.claim("dead", 111, lease_s=2.0)  # and never heart-beats again
    worker = Worker(queue, WorkerOptions(store_path=str(tmp_path / "results.sqlite"), lease_s=2.0, poll_s=0.05,
                                         idle_exit_s=0.1, max_jobs=1))
    taken: list[jobs_mod.Job] = []
    worker.run_one = lambda job: taken.append(job) or "done"  # type: ignore[method-assign]
    start = time.monotonic()
    assert worker.work() == int(orphaned)
    waited = time.monotonic() - start
    if orphaned:
        assert [(j.id, j.attempts) for j in taken] == [(s.id, 2)] and waited >= 1.9
    else:
        assert taken == [] and waited < 1.9


def test_a_slow_queue_does_not_make_an_idle_worker_give_up_on_a_dead_worker_s_job(tmp_path: Path) -> None:
    """Whether a whole lease has passed is judged at the moment the queue was asked, not when its answer came: a
    claim that answers late (a busy machine) must not end the wait just as the dead worker's job becomes claimable."""
    queue = JobQueue(tmp_path / "jobs.sqlite")
    s = spec()
    queue.submit([s])
    queue.claim("dead", 111, lease_s=1.0)
    claim = queue.claim

    def slow_claim(*args: object, **kwargs: object) -> object:
        job = claim(*args, **kwargs)
        time.sleep(0.3)  # the answer arrives late
        return job

    queue.claim = slow_claim  # type: ignore[method-assign]
    worker = Worker(queue, WorkerOptions(store_path=str(tmp_path / "results.sqlite"), lease_s=1.0, poll_s=0.01,
                                         idle_exit_s=0.1, max_jobs=1))
    taken: list[jobs_mod.Job] = []
    worker.run_one = lambda job: taken.append(job) or "done"  # type: ignore[method-assign]
    assert worker.work() == 1 and [j.id for j in taken] == [s.id]


def test_a_job_that_keeps_killing_workers_fails_after_max_attempts(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite")
    s = spec()
    queue.submit([s], max_attempts=2)
    for _ in range(2):
        job = queue.claim("w", 1, lease_s=1.0)
        queue.reap(now=job.heartbeat + 2.0)
    job = queue.get(s.id)
    assert job.status == "failed" and job.error.startswith("gave up after 2 attempts")
    assert queue.claim("w", 1) is None


def test_cancel_and_retry_move_through_the_states(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite")
    a, b = spec("stem"), spec("conv5_x")
    queue.submit([a, b], priority=[0, 1])
    assert queue.cancel(b.id) == "cancelled"  # queued: at once
    job = queue.claim("w", 1)
    assert job.id == a.id and queue.claim("w", 1) is None
    assert queue.cancel(a.id, grace_s=7.0) == "cancelling"
    status, asked_at, grace = queue.heartbeat(a.id, job.lease)
    assert status == "cancelling" and asked_at is not None and grace == 7.0
    assert queue.mark_cancelled(a.id, job.lease)
    assert queue.get(a.id).status == "cancelled"
    assert queue.retry(a.id) == "queued" and queue.retry(b.id) == "queued"
    assert [j.id for j in queue.jobs(status="queued")] == [a.id, b.id]
    job = queue.claim("w", 1)
    queue.complete(job.id, job.lease)
    with pytest.raises(UserError, match="only failed or cancelled"):
        queue.retry(a.id)
    assert queue.cancel(a.id) == "done"  # a finished job stays finished


def test_one_worker_is_spawned_for_many_requests(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite")
    assert queue.claim_spawn(guard_s=60) is True
    assert queue.claim_spawn(guard_s=60) is False  # just started: a second dashboard does not start another
    other = JobQueue(tmp_path / "b.sqlite")
    other.worker_beat("h:1", 1, 30.0, None, time.time())
    assert other.claim_spawn() is False  # a live worker is enough
    assert [w["pid"] for w in other.live_workers()] == [1]


# -- workers -----------------------------------------------------------------------------------------------


class Sleepy:
    """A fake method: reports progress every 50 ms for `steps` steps, then returns a row."""

    def variants(self, base: BaseModelConfig, splits: list[str]) -> list[VariantConfig]:
        return [VariantConfig.make("test_sleepy", s, base, steps=40) for s in splits]

    def run(self, cfg: VariantConfig, ctx) -> dict:  # noqa: ANN001
        steps = int(cfg.knob("steps"))
        for i in range(steps):
            ctx.progress(i / steps, f"step {i}")
            time.sleep(0.05)
        return base_row(cfg, ctx, accuracy=0.5, deployed_val_accuracy=0.5, bits_actual=float(steps))


class Broken(Sleepy):
    def run(self, cfg: VariantConfig, ctx) -> dict:  # noqa: ANN001
        raise ValueError(f"boom at {cfg.split}")


class CancelledAsItEnds(Sleepy):
    """A fake method whose job is asked to stop after its last progress report, as a study's pruner may do."""

    def run(self, cfg: VariantConfig, ctx) -> dict:  # noqa: ANN001
        row = super().run(cfg, ctx)
        queue = JobQueue()
        queue.cancel(next(j.id for j in queue.jobs(status="running") if j.spec.method == "test_late_cancel"))
        return row


@pytest.fixture()
def fake_methods() -> Iterator[None]:
    METHODS.add("test_sleepy", Sleepy())
    METHODS.add("test_broken", Broken())
    METHODS.add("test_late_cancel", CancelledAsItEnds())
    yield
    for name in ("test_sleepy", "test_broken", "test_late_cancel"):
        METHODS._items.pop(name, None)


def smoke_spec(small_data: ImageData, method: str, split: str = "conv4_x", **knobs: object) -> JobSpec:
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    return one_variant(method, split, "smoke", base, os.environ["COINFER_DATA"], **knobs).spec


def test_worker_runs_jobs_and_a_failure_keeps_its_error(qenv: Path, small_data: ImageData, fake_methods: None,
                                                       capsys: pytest.CaptureFixture) -> None:
    queue, store = JobQueue(), ResultsStore()
    ok, bad = smoke_spec(small_data, "test_sleepy", steps=3), smoke_spec(small_data, "test_broken")
    queue.submit([ok, bad], priority=[0, 1])
    worker = Worker(queue, WorkerOptions(heartbeat_s=0.1, poll_s=0.05, max_jobs=2))
    assert worker.work() == 2
    done, failed = queue.get(ok.id), queue.get(bad.id)
    assert done.status == "done" and done.progress == 1.0 and done.result == {"accuracy": 0.5, "bits_actual": 3.0}
    assert store.get(ok.id)["bits_actual"] == 3.0 and len(store) == 1
    assert failed.status == "failed" and failed.error == "ValueError: boom at conv4_x"
    assert "raise ValueError" in failed.traceback
    assert main(["jobs", "show", bad.id[:6]]) == 0
    out = capsys.readouterr().out
    assert "error      ValueError: boom at conv4_x" in out and "Traceback" in out
    assert main(["jobs"]) == 0
    listing = capsys.readouterr().out
    assert "ValueError: boom at conv4_x" in listing and "1 done, 1 failed" in listing
    assert main(["jobs", "retry", bad.id]) == 0
    assert queue.get(bad.id).status == "queued"


def test_a_cancel_asked_as_the_job_ends_stands_at_once(qenv: Path, small_data: ImageData,
                                                        fake_methods: None) -> None:
    """The cancel is kept (no row stored, the job cancelled), not taken for a lease another worker holds (which left
    the job cancelling until its lease ran out)."""
    queue, store = JobQueue(), ResultsStore()
    late = smoke_spec(small_data, "test_late_cancel", steps=2)
    queue.submit([late])
    worker = Worker(queue, WorkerOptions(heartbeat_s=0.1, poll_s=0.05, max_jobs=1))
    assert worker.work() == 1
    job = queue.get(late.id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert store.get(late.id) is None


def test_cooperative_cancel_stops_the_job_and_the_worker_goes_on(qenv: Path, small_data: ImageData,
                                                                 fake_methods: None) -> None:
    queue, store = JobQueue(), ResultsStore()
    slow, quick = smoke_spec(small_data, "test_sleepy", steps=2000), smoke_spec(small_data, "test_sleepy", "stem",
                                                                                 steps=2)
    queue.submit([slow, quick], priority=[0, 1])
    stop = threading.Event()
    worker = Worker(queue, WorkerOptions(heartbeat_s=0.05, poll_s=0.05))
    thread = threading.Thread(target=worker.work, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: queue.get(slow.id).progress > 0.001, 60, "progress of the slow job")
        queue.cancel(slow.id)
        wait_until(lambda: queue.get(slow.id).status == "cancelled", 10, "the cancel")
        wait_until(lambda: queue.get(quick.id).status == "done", 60, "the next job")
    finally:
        stop.set()
        thread.join(30)
    assert slow.id not in store and quick.id in store
    assert queue.get(slow.id).progress < 0.5


# -- worker processes: kill and resume -----------------------------------------------------------------------


def test_an_ignored_cancel_gets_the_worker_killed(qenv: Path, small_data: ImageData) -> None:
    """Base training reports progress once per 10 batches: a cancel in between is not seen in time, so the
    worker kills itself after the grace period, and the job ends cancelled with no row."""
    profile = PROFILES.get("smoke")
    base = dataclasses.replace(profile.base_config(small_data.fingerprint), lr=0.11)  # not trained yet: slow
    s = one_variant("original", "server_only", "smoke", base, os.environ["COINFER_DATA"]).spec
    queue = JobQueue()
    queue.submit([s])
    opts = WorkerOptions(heartbeat_s=0.1, lease_s=5.0, poll_s=0.1, threads=1, hard_kill=True)
    proc = start_worker_process(queue.path, opts)
    try:
        wait_until(lambda: "loss" in running(queue, s.id).message, 120, "the first training batches")
        queue.cancel(s.id, grace_s=0.5)
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.is_alive():
            proc.kill()
    job = queue.get(s.id)
    assert job.status == "cancelled" and "grace period" in job.message
    assert s.id not in ResultsStore()
    assert queue.retry(s.id) == "queued"


def test_a_terminated_sweep_stops_its_workers_and_gives_the_job_back(qenv: Path, small_data: ImageData) -> None:
    """SIGTERM to a running `python -m engine sweep`: the command ends, its worker processes end too (none keeps
    training in the background), and the job it was running is queued again at once, not after its lease."""
    profile = PROFILES.get("smoke")
    base = dataclasses.replace(profile.base_config(small_data.fingerprint), lr=0.12, epochs=3)  # not trained: slow
    s = one_variant("original", "server_only", "smoke", base, os.environ["COINFER_DATA"]).spec
    queue = JobQueue()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    code = ("from engine.queue import JobSpec, WorkerOptions, interrupt_on_terminate; "
            "from engine.sweep import Planned, run; interrupt_on_terminate(); "
            f"run([Planned(JobSpec.from_json({s.to_json()!r}), 0)], workers=1, "
            "options=WorkerOptions(threads=1, lease_s=600, heartbeat_s=0.2, poll_s=0.1))")
    sweep = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    try:
        wait_until(lambda: (job := queue.get(s.id)) is not None and "loss" in job.message, 120,
                   "the worker's first training batches")
        worker_pid = queue.get(s.id).worker_pid
        assert worker_pid != sweep.pid and os.getpgid(worker_pid) == sweep.pid  # a child of the sweep
        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(60) is not None
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    wait_until(lambda: not _alive(worker_pid), 30, "the worker to exit")
    job = queue.get(s.id)
    assert job.status == "queued" and job.attempts == 0, (job.status, job.message)  # lease was 600 s: released
    # the interrupted sweep paused the queue: nothing takes its job or starts a worker behind the user's back
    assert "interrupted" in queue.paused()
    assert queue.claim("w", 1) is None and jobs_mod.ensure_worker(queue) is None
    assert queue.resume() and queue.paused() is None
    assert queue.claim("w", 1).id == s.id


def test_a_paused_queue_hands_out_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path))
    queue = JobQueue()
    queue.submit([spec("conv3_x"), spec("conv4_x")])
    first = queue.claim("w1", 1)
    assert main(["jobs", "pause"]) == 0
    assert "by hand" in queue.paused()
    assert queue.claim("w2", 2) is None  # queued jobs wait; the running one goes on
    assert queue.get(first.id).status == "running"
    assert main(["jobs", "list"]) == 0 and "the queue is paused" in capsys.readouterr().out
    assert main(["jobs", "resume"]) == 0 and queue.paused() is None
    assert main(["jobs", "resume"]) == 0 and "was not paused" in capsys.readouterr().out
    assert queue.claim("w2", 2) is not None

def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, ended but not yet reaped by whoever adopted it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_a_sigkilled_worker_s_job_is_requeued_resumed_and_finished_once(qenv: Path, small_data: ImageData) -> None:
    profile = PROFILES.get("smoke")
    base = dataclasses.replace(profile.base_config(small_data.fingerprint), epochs=2)
    s = one_variant("original", "server_only", "smoke", base, os.environ["COINFER_DATA"]).spec
    queue, store = JobQueue(), ResultsStore()
    queue.submit([s])
    opts = WorkerOptions(heartbeat_s=0.2, lease_s=2.0, poll_s=0.1, threads=1, hard_kill=True,
                         log_path=str(qenv / "w1.log"))
    partial = base_checkpoint_path(base, qenv).with_suffix(".partial.pt")
    first = start_worker_process(queue.path, opts)
    try:
        wait_until(lambda: running(queue, s.id) and partial.with_suffix(".pt.sha256").exists(), 240,
                   "the epoch-1 checkpoint")
        assert queue.get(s.id).status == "running" and queue.get(s.id).worker_pid == first.pid
        os.kill(first.pid, signal.SIGKILL)
        first.join(10)
    finally:
        if first.is_alive():
            first.kill()
    assert first.exitcode == -signal.SIGKILL
    orphan = queue.get(s.id)
    assert orphan.status == "running"  # until the lease expires
    # idle for longer than the lease: the orphan becomes claimable only once its lease has expired (with an idle
    # exit shorter than the lease, a worker started quickly gave up before that)
    second = start_worker_process(queue.path, dataclasses.replace(opts, idle_exit_s=opts.lease_s + 2.0,
                                                                  log_path=str(qenv / "w2.log")))
    try:
        wait_until(lambda: queue.get(s.id).status in ("done", "failed"), 300, "the requeued job")
        second.join(30)
    finally:
        if second.is_alive():
            second.kill()
    job = queue.get(s.id)
    assert job.status == "done", job.error
    assert job.attempts == 2 and job.worker_pid == second.pid
    assert job.started_at >= orphan.heartbeat + opts.lease_s  # claimed again only once the lease had expired
    assert "resuming base model" in (qenv / "w2.log").read_text()  # from the epoch-1 checkpoint, not from scratch
    assert not partial.exists()
    assert len(store) == 1
    row = store.get(s.id)
    assert row["method"] == "original" and row["split"] == "server_only" and row["base_id"] == base.id
    assert 0.0 <= row["accuracy"] <= 1.0 and row["accuracy"] == row["base_test_accuracy"]
    assert job.result["accuracy"] == row["accuracy"]


# -- the dashboard -----------------------------------------------------------------------------------------


def test_the_plane_follows_its_jobs_progress_and_errors(qenv: Path, small_data: ImageData,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The plane's start button queues the profile's sweep (cheap variants first) and asks for a worker; the
    progress strip shows a running job's heartbeat message, and a failed job's error shows on the page."""
    started: list[Path] = []
    monkeypatch.setattr(jobs_mod, "ensure_worker", lambda queue, **kw: started.append(queue.path) or 4242)
    at = AppTest.from_file(DASHBOARD, default_timeout=60)
    at.query_params["profile"] = "smoke"
    at.query_params["width"] = "0.125"
    at.run()
    next(b for b in at.button if b.label == "Start the smoke profile").click().run()
    assert not at.exception
    queue = JobQueue()
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    jobs = queue.jobs()
    assert {j.spec.base_id for j in jobs} == {base.id} and {j.status for j in jobs} == {"queued"}
    assert jobs[0].method == "original" and jobs[0].split in ("server_only", "device_only")  # cheap first
    assert started and set(started) == {queue.path}
    job = queue.claim("test-worker", 1)
    queue.heartbeat(job.id, job.lease, 0.5, "base model: epoch 1/1")
    at.run()
    assert "base model: epoch 1/1" in at.get("progress")[0].proto.text
    queue.fail(job.id, job.lease, "ValueError: out of coffee")
    at.run()
    assert any("out of coffee" in w.value and job.split in w.value for w in at.warning)


def test_ensure_worker_starts_one_detached_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))
    queue = JobQueue()
    pid = jobs_mod.ensure_worker(queue, idle_exit_s=2.0)
    assert isinstance(pid, int)
    assert jobs_mod.ensure_worker(queue) is None  # started a moment ago: not twice
    wait_until(lambda: bool(queue.live_workers()), 60, "the worker to register")
    wait_until(lambda: not queue.live_workers(), 60, "the idle worker to exit")
    logs = list((tmp_path / "cache" / "jobs").glob("worker-*.log"))
    assert len(logs) == 1 and "worker: 1 process(es)" in logs[0].read_text()


def test_a_pool_whose_workers_cannot_start_gives_up_in_one_line(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process that dies before taking a job (here: its spawned interpreter re-runs a main script that
    exits) is not replaced for ever: after FAILED_STARTS per slot the pool stops, says so, and the job stays queued."""
    script = tmp_path / "broken_main.py"
    script.write_text("raise SystemExit(3)\n")
    broken = type(sys)("__main__")
    broken.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", broken)
    queue = JobQueue(tmp_path / "jobs.sqlite")
    queue.submit([spec()])
    pool = jobs_mod.WorkerPool(queue, 1, WorkerOptions(poll_s=0.05))
    with pytest.raises(UserError, match=r"^3 local workers in a row ended with an error before taking a job "
                                        r"\(last exit status 3\)") as err:
        pool.run(interval=0.05, keep_alive=True)
    assert "\n" not in str(err.value) and not pool.procs
    assert [j.status for j in queue.jobs()] == ["queued"]
