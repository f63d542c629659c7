"""bench/bench_search.py: its grid (the rows the sweep measured, not a study's) and how its table names a row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.bench_search import config_name, grid_rows
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


def test_the_table_names_a_configuration_by_the_knobs_that_tell_it_apart() -> None:
    """A grid row (results-store columns) and a trial (study columns) name their run, snapshot and coding, not the
    knobs every configuration shares."""
    knobs = {"target": 0.32, "hold_iterations": 62, "snapshot": 1, "encoder": "two_step", "enc_d": 32, "lr": 0.04,
             "batch_size": 128}
    row = pd.Series({"method": "three_step", "split": "conv4_x", "knobs": knobs, "deployed_val_accuracy": 0.8394,
                     "accuracy": 0.8299})
    assert config_name(row) == ("three_step conv4_x (enc_d=32, encoder=two_step, hold_iterations=62, snapshot=1, "
                                "target=0.32) (83.94% val, 82.99% test)")
    trial = pd.Series({"method": "original", "split": "device_only", "knobs": {}, "validation": 0.8574,
                       "test": 0.8534})
    assert config_name(trial) == "original device_only (85.74% val, 85.34% test)"
    assert config_name(None) == "none"
