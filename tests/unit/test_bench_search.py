"""bench/bench_search.py's grid: the rows the sweep measured, not a study's."""

from __future__ import annotations

from pathlib import Path

from bench.bench_search import grid_rows
from engine.profiles import PROFILES
from engine.queue import JobQueue
from engine.store import ResultsStore
from engine.sweep import one_variant, sweep_tag


def test_the_grid_is_what_the_sweep_ran_never_a_study_s(tmp_path: Path) -> None:
    """The grid is the sweep's rows (`engine.sweep.sweep_jobs`): those it tagged, or, from a sweep before tags, the
    untagged ones; never a study's."""
    base = PROFILES.get("smoke").base_config("synthetic-fingerprint")
    queue, store = JobQueue(tmp_path / "jobs.sqlite"), ResultsStore(tmp_path / "results.sqlite")
    tagged, untagged, studied = (one_variant("original", "conv4_x", "smoke", base, None, bits=b).spec
                                 for b in (8, 4, 2))
    for spec, tag in ((untagged, None), (studied, "study-latency"), (tagged, sweep_tag(base.id))):
        queue.submit([spec], tag=tag)
        job = queue.claim("test", tag=tag)
        assert job is not None and job.id == spec.id
        queue.complete(job.id, job.lease)
        store.put({"id": spec.id, "method": "original", "split": "conv4_x", "base_id": base.id, "seconds": 1.0})
        grid, _ = grid_rows(base, store, queue)
        if spec is untagged:  # no tagged job yet: a sweep before tags
            assert list(grid["id"]) == [untagged.id]
    assert list(grid["id"]) == [tagged.id]
