"""What a page reads of a search study: the trial table with pruned and failed trials marked and never chosen, the
best configuration, the progress curve and its reference from the results store, the front, Optuna's views, and a
missing or damaged studies file."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from search_trials import complete, failed, pruned

from engine.errors import UserError
from engine.latency import DEVICES
from engine.pareto import best_variant
from engine.search import Environment, watch
from engine.search.study import storage, storage_path

ENV = Environment(DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8)
DROP = 0.02  # the base model's 0.90 validation accuracy: the threshold is 0.88
TOTAL = 1.2e8


def row(ident: str, split: str, val: float, flops: float, bits: float, memory: float = 1e6, method: str = "three_step",
        b: int | None = 4) -> dict:
    return {"id": ident, "method": method, "split": split, "knobs": {} if b is None else {"bits": b},
            "deployed_val_accuracy": val, "accuracy": val - 0.01, "base_val_accuracy": 0.90, "device_flops": flops,
            "server_flops": TOTAL - flops, "device_memory_bytes": memory, "bits_actual": bits}


ROWS = {
    "server": row("server", "server_only", 0.90, 0.0, 18_000.0, 0.0, "original", None),
    "slow": row("slow", "conv2_x", 0.89, 2e7, 4_000.0),
    "fast": row("fast", "conv3_x", 0.885, 4e7, 600.0),
    "wrong": row("wrong", "conv4_x", 0.80, 6e7, 80.0),  # fastest, below the threshold
    "big": row("big", "conv5_x", 0.90, 8e7, 60.0, memory=5e9),  # fast and accurate, but too big for the device
    "cut": row("cut", "stem", 0.5, 1e6, 9_000.0),
    "oom": row("oom", "conv2_x", 0.5, 2e7, 900.0),
}


def study_of(objective: str = "latency") -> optuna.Study:
    study = optuna.create_study(directions=["minimize"] if objective == "latency" else
                                ["minimize", "minimize", "maximize"])
    for key in ("server", "slow", "fast", "wrong", "big"):
        study.add_trial(complete(ROWS[key], ENV, DROP, objective, source="results store" if key == "slow" else "job"))
    study.add_trial(pruned(ROWS["cut"]))
    study.add_trial(failed(ROWS["oom"]))
    return study


def test_the_trial_table_marks_what_may_be_chosen() -> None:
    table = watch.trials_frame(study_of().get_trials())
    assert list(table["variant_id"]) == ["server", "slow", "fast", "wrong", "big", "cut", "oom"]
    marks = dict(zip(table["variant_id"], table["state"], strict=True))
    assert marks["cut"] == "✂️ pruned" and marks["oom"] == "❌ failed" and marks["fast"] == "✅ complete"
    assert dict(zip(table["variant_id"], table["eligible"], strict=True)) == {
        "server": True, "slow": True, "fast": True, "wrong": False, "big": False, "cut": False, "oom": False}
    assert table.loc[table["variant_id"] == "fast", "knobs"].item() == "bits=4"
    assert table.loc[table["variant_id"] == "server", "knobs"].item() == ""
    assert table["charged_minutes"].tolist() == pytest.approx([1, 1, 1, 1, 1, 0.5, 5 / 60])
    assert table.loc[table["variant_id"] == "oom", "error"].item() == "out of memory"
    assert watch.trials_frame([]).empty
    # a trial still running: interrupted when no process runs the study (its next run picks it up)
    running = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs={"variant_id": "slow"})
    assert watch.trials_frame([running])["state"].item() == "▶️ running"
    assert watch.trials_frame([running], live=False)["state"].item() == watch.INTERRUPTED
    assert not watch.trials_frame([running])["finished"].item()


def test_the_best_is_the_fastest_that_meets_the_threshold_and_fits() -> None:
    trials = study_of().get_trials()
    table = watch.trials_frame(trials)
    best = watch.best_row(trials)
    assert best["variant_id"] == "fast" and best["knobs_text"] == "bits=4"
    assert best["val_accuracy"] == 0.885 and best["test_accuracy"] == pytest.approx(0.875)
    assert best["latency"] == pytest.approx(best["t_device"] + best["t_transmit"] + best["t_server"])
    assert min(table["latency"]) < best["latency"]  # "wrong" and "big" are faster, and never chosen
    bars = watch.breakdown(best, delay_s=0.02)
    assert bars["t_propagation"].item() == 0.02 and bars["id"].item() == "fast"
    assert bars["t_device"].item() == best["t_device"] and "t_propagation" not in watch.breakdown(best)
    # the progress curve: one point per finished trial (pruned and failed ones cost minutes too)
    curve = watch.best_latency_curve(table)
    assert curve["worker_minutes"].tolist() == pytest.approx([1, 2, 3, 4, 5, 5.5, 5.5 + 5 / 60])
    latency = dict(zip(table["variant_id"], table["latency"], strict=True))
    assert curve["best_latency"].tolist() == pytest.approx(
        [latency["server"], latency["slow"], *[latency["fast"]] * 5])
    # a front study reads the same trials; its best is the most accurate on its front that may be chosen
    front = watch.trials_frame(study_of("front").get_trials())
    assert watch.best_latency_curve(front)["best_latency"].tolist() == curve["best_latency"].tolist()
    assert watch.best_row(study_of("front").get_trials())["variant_id"] == "server"
    # nothing may be chosen yet
    none = [complete(ROWS["wrong"], ENV, DROP), pruned(ROWS["cut"])]
    assert watch.best_row(none) is None
    assert watch.best_latency_curve(watch.trials_frame(none))["best_latency"].isna().all()


def test_the_reference_is_the_store_best_outside_the_study() -> None:
    table = watch.trials_frame(study_of().get_trials())
    rows = pd.DataFrame(list(ROWS.values()) + [row("grid", "conv4_x", 0.95, 5e7, 300.0)])
    reference = watch.store_reference(rows, table, ENV, 0.88)
    assert reference["id"] == "grid"  # its own best ("fast") was measured by the study's jobs
    own = rows[rows["id"] != "grid"]
    expected = best_variant(own[~own["id"].isin(["server", "fast", "wrong", "big"])], ENV.device, ENV.server,
                            ENV.rate_bps, 0.88)
    assert watch.store_reference(own, table, ENV, 0.88)["id"] == expected["id"] == "slow"  # told from the store
    assert watch.store_reference(rows.iloc[0:0], table, ENV, 0.88) is None
    fig = watch.progress_figure(watch.best_latency_curve(table), float(reference["latency"]))
    assert fig.layout.shapes[0].y0 == pytest.approx(reference["latency"])
    assert not watch.progress_figure(watch.best_latency_curve(table), None).layout.shapes


def test_the_front_marks_the_trials_that_may_be_chosen() -> None:
    table = watch.trials_frame(study_of().get_trials())
    traces = {t.name: t for t in watch.front_figure(table).data}
    assert set(traces["meets the threshold"].customdata) == {"slow", "fast"}  # server only: 0 FLOPs, off the axis
    assert set(traces["below it or too big"].customdata) == {"wrong", "big"}
    assert list(traces["meets the threshold"].marker.color) == [0.89, 0.885]
    assert watch.front_figure(watch.trials_frame([])).data == ()


def test_optuna_views_wait_for_enough_trials() -> None:
    trials = study_of().get_trials()
    few = watch.optuna_views(trials[:2], "latency")
    assert [f for _, f, _ in few] == [None, None] and all("3 complete trials; 2 so far" in n for _, _, n in few)
    views = watch.optuna_views(trials, "latency")
    assert [(title, fig is not None, note) for title, fig, note in views] == [
        ("Parallel coordinates", True, ""), ("Parameter importances", True, "")]
    front = watch.optuna_views(study_of("front").get_trials(), "front")
    assert all(fig is not None for _, fig, _ in front), front
    assert front[0][1].to_plotly_json()["data"][0]["customdata"][0][0] == "validation accuracy"  # the target


def test_reading_a_missing_or_damaged_studies_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert watch.open_storage(cache) is None and not storage_path(cache).exists()  # reading creates nothing
    study = optuna.create_study(storage=storage(cache), study_name="latency-x")
    study.set_user_attr("config", {"objective": "latency"})
    study.set_user_attr("threshold", 0.88)
    for t in study_of().get_trials():
        study.add_trial(t)
    stored = watch.open_storage(cache)
    view = watch.read_study(stored, "latency-x")
    assert view.objective == "latency" and view.threshold == 0.88 and len(view.trials) == 7
    assert watch.best_row(view.trials)["variant_id"] == "fast"
    assert watch.read_study(stored, "latency-y") is None
    damaged = tmp_path / "damaged"
    storage_path(damaged).parent.mkdir(parents=True)
    storage_path(damaged).write_bytes(b"not a database" * 100)
    with pytest.raises(UserError, match="cannot be read") as err:
        stored = watch.open_storage(damaged)
        watch.read_study(stored, "latency-x")
    assert "\n" not in str(err.value)
