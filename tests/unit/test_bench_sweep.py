"""bench/bench_sweep.py reads one sweep's jobs out of a shared table (`engine.sweep.sweep_jobs`), and by the UTC
window it is given."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.bench_sweep import occupancy, utc_time
from engine.profiles import PROFILES
from engine.queue import JobQueue
from engine.sweep import one_variant, sweep_jobs, sweep_tag


def test_a_window_s_ends_are_utc_times_to_the_minute_or_second() -> None:
    assert utc_time("1970-01-01T00:01") == 60.0
    assert utc_time("2026-12-07T01:17:30") - utc_time("2026-12-07T01:17") == 30.0


@pytest.mark.parametrize("text", ["2026-12-07 01:17", "yesterday", "2026-13-01T00:00"])
def test_anything_else_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a UTC time"):
        utc_time(text)


def test_the_sweep_s_jobs_are_those_it_tagged_else_the_untagged_never_a_study_s(tmp_path: Path) -> None:
    base = PROFILES.get("smoke").base_config("synthetic-fingerprint")
    other = PROFILES.get("smoke").base_config("other-fingerprint")
    queue = JobQueue(tmp_path / "jobs.sqlite")
    swept, by_hand, studied = (one_variant("original", "conv4_x", "smoke", base, None, bits=b).spec for b in (8, 4, 2))
    queue.submit([swept], tag=sweep_tag(base.id))
    queue.submit([by_hand])
    queue.submit([studied], tag="study-latency")
    queue.submit([one_variant("original", "conv4_x", "smoke", other, None).spec])  # another base model's
    assert [j.id for j in sweep_jobs(queue.jobs(), base.id)] == [swept.id]
    before_tags = [j for j in queue.jobs() if j.id != swept.id]  # a sweep before tags: the untagged jobs
    assert [j.id for j in sweep_jobs(before_tags, base.id)] == [by_hand.id]


def test_occupancy_is_the_share_of_the_peak_s_worker_time_the_jobs_filled() -> None:
    assert occupancy([]) == (0, 0.0)
    assert occupancy([(0.0, 10.0), (0.0, 10.0)]) == (2, 1.0)
    # two workers for 10 s; the second idles its last 5: 15 of 20 worker seconds
    assert occupancy([(0.0, 10.0), (0.0, 5.0)]) == (2, 0.75)
    assert occupancy([(0.0, 5.0), (5.0, 10.0)]) == (1, 1.0)  # one after the other: one worker, never idle
