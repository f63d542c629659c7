"""bench/bench_sweep.py reads one sweep's jobs out of a shared table by the UTC window it is given."""

from __future__ import annotations

import argparse

import pytest

from bench.bench_sweep import utc_time


def test_a_window_s_ends_are_utc_times_to_the_minute_or_second() -> None:
    assert utc_time("1970-01-01T00:01") == 60.0
    assert utc_time("2026-12-07T01:17:30") - utc_time("2026-12-07T01:17") == 30.0


@pytest.mark.parametrize("text", ["2026-12-07 01:17", "yesterday", "2026-13-01T00:00"])
def test_anything_else_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a UTC time"):
        utc_time(text)
