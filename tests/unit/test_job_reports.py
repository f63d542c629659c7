"""The job table's tags and reports: a tagged job is claimed only by its tag's workers (and by any untagged one), a
job's reported figures travel with its heartbeat and stay with it when it is done, and a table of an earlier
release gains the columns when opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine import intermediate
from engine.queue import JobQueue, JobSpec, Lease

SPEC = JobSpec("original", "conv4_x", "smoke", {"dataset": "d", "width": 0.125}, {"bits": 8})


def test_a_tagged_job_goes_to_its_tag_s_workers(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.sqlite")
    other = JobSpec("original", "conv3_x", "smoke", {"dataset": "d", "width": 0.125}, {"bits": 8})
    q.submit([SPEC], tag="study-a")
    q.submit([other])
    assert q.claim("w", tag="study-b") is None
    assert q.claim("w", tag="study-a").id == SPEC.id
    assert q.claim("w").id == other.id  # an untagged claim takes any job
    assert [j.id for j in q.jobs(tag="study-a")] == [SPEC.id]


def test_a_queued_job_submitted_again_with_a_tag_takes_it(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.sqlite")
    q.submit([SPEC])
    q.submit([SPEC], tag="study-a")
    assert q.get(SPEC.id).tag == "study-a"


def test_reports_travel_with_the_heartbeat_and_stay_with_the_done_job(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "jobs.sqlite")
    q.submit([SPEC])
    job = q.claim("w")
    lease = Lease(job)
    with intermediate.reporting_to(lease.record):
        intermediate.report(intermediate.PRUNE_LEVEL, 0, 0.81)
        intermediate.report(intermediate.ENCODER_EPOCH, 1, 0.79)
    intermediate.report(intermediate.PRUNE_LEVEL, 1, 0.5)  # outside: goes nowhere
    q.heartbeat(job.id, lease.token, 0.5, "half", lease.reports_now())
    assert q.get(job.id).reports == {"prune_level": {"0": 0.81}, "encoder_epoch": {"1": 0.79}}
    lease.record(intermediate.PRUNE_LEVEL, 1, 0.78)
    q.complete(job.id, lease.token, {"accuracy": 0.8}, reports=lease.reports_now())
    assert q.get(job.id).reports["prune_level"] == {"0": 0.81, "1": 0.78}
    q.submit([SPEC], requeue_finished=True)
    assert q.get(job.id).reports is None  # a new attempt reports afresh


def test_a_job_table_of_an_earlier_release_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    old = JobQueue(path)
    old.submit([SPEC])
    with sqlite3.connect(path) as conn:  # drop the columns as an earlier release never had them
        conn.execute("ALTER TABLE jobs DROP COLUMN tag")
        conn.execute("ALTER TABLE jobs DROP COLUMN reports")
    q = JobQueue(path)
    job = q.get(SPEC.id)
    assert job is not None and job.tag is None and job.reports is None
    assert q.claim("w", tag="x") is None and q.claim("w").id == SPEC.id
