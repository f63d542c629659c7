"""AppTest of the Search page: a study with known trials in the cache's studies database, read as the sidebar's
environment names it; its table, best configuration, figures, pin and export buttons, the start button (no process
is started here) and the states without a study or with a damaged studies file."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from search_trials import complete, failed, pruned
from test_pages import figures, params, run_page, texts, traces, widget

from app import ui
from engine.config import VariantConfig
from engine.data import ImageData
from engine.latency import DEVICES
from engine.pareto import best_variant
from engine.profiles import PROFILES
from engine.search import launch
from engine.search.launch import SearchRequest
from engine.search.study import storage, storage_path
from engine.store import ResultsStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from bench_pages import synthetic_rows  # noqa: E402

PI3, GPU = DEVICES.get("pi3"), DEVICES.get("rtx2080ti")
RATE, DROP, NEED = 40e3 * 8, 0.02, 0.88  # the dashboard's defaults; synthetic base models validate at 0.90


def study_name(data: ImageData, objective: str = "latency") -> str:
    """The study the sidebar's default environment names (the smoke profile at width 0.125)."""
    base = PROFILES.get("smoke").base_config(data.fingerprint, width=0.125)
    return SearchRequest.of("smoke", PI3, GPU, RATE, drop=DROP, objective=objective, width=0.125,
                            model="resnet18").config(base).name


@pytest.fixture()
def searched(fresh_cache: Path, small_data: ImageData) -> dict:
    """A results store of 40 synthetic rows of the smoke base model (test accuracy 3 points under validation) and a
    latency study whose first eight rows are complete trials measured by its jobs, then a pruned and a failed one, and
    a fast one below the threshold on validation (not on test); the other rows stand for the grid."""
    base = PROFILES.get("smoke").base_config(small_data.fingerprint, width=0.125)
    rows = synthetic_rows(base.id, 40, dataset_fingerprint=small_data.fingerprint)
    for r in rows:
        r["accuracy"] = r["deployed_val_accuracy"] - 0.03
    ResultsStore(fresh_cache / "results.sqlite").put_many(rows)
    env = SearchRequest.of("smoke", PI3, GPU, RATE, drop=DROP).environment()
    name = study_name(small_data)
    study = optuna.create_study(storage=storage(fresh_cache), study_name=name)
    study.set_user_attr("config", {"objective": "latency", "profile": "smoke", "base": base.id})
    study.set_user_attr("threshold", NEED)
    for r in rows[:8]:
        study.add_trial(complete(r, env, DROP))
    study.add_trial(pruned(rows[8]))
    study.add_trial(failed(rows[9]))
    table = pd.DataFrame(rows)
    best = best_variant(table.iloc[:8], PI3, GPU, RATE, NEED)
    # faster than the best and 95 % on the test images, but below the threshold on validation: never chosen
    tempting = {**best.to_dict(), "id": "t-tempting", "deployed_val_accuracy": 0.80, "accuracy": 0.95,
                "bits_actual": best["bits_actual"] / 4}
    study.add_trial(complete(tempting, env, DROP))
    grid = best_variant(table.iloc[8:], PI3, GPU, RATE, NEED)
    return {"name": name, "rows": rows, "best": best, "grid": grid}


def test_the_page_shows_the_study_and_pins_and_exports_its_best(searched: dict, small_data: ImageData,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_page("search")
    assert f"study `{searched['name']}`" in texts(at, "caption")  # the name the command gives the same environment
    rows, best = searched["rows"], searched["best"]
    table = at.dataframe[0].value
    assert table["number"].tolist() == list(range(11))
    assert table["state"].iloc[8] == "✂️ pruned" and table["state"].iloc[9] == "❌ failed"
    assert not table["eligible"].iloc[8] and not table["eligible"].iloc[9] and not table["eligible"].iloc[10]
    assert table["latency"].iloc[10] < best["latency"] and table["test"].iloc[10] == 0.95
    assert table["validation"].iloc[0] == pytest.approx(rows[0]["deployed_val_accuracy"])
    assert table["test"].iloc[0] == pytest.approx(rows[0]["accuracy"])
    # the best configuration: the fastest complete trial within the validation threshold
    message = at.success[0].value
    assert f"`{best['id']}`" in message and f"{best['method']} @ {best['split']}" in message
    assert f"validation **{best['deployed_val_accuracy']:.2%}**" in message
    assert f"(test {best['accuracy']:.2%})" in message
    drawn = figures(at)
    assert traces(drawn[0])["device compute"]["customdata"] == [best["id"]]  # its latency breakdown
    front = traces(drawn[1])
    assert best["id"] in front["meets the threshold"]["customdata"]
    assert not set(front["meets the threshold"]["customdata"]) & {rows[8]["id"], rows[9]["id"]}
    assert "t-tempting" in front["below it or too big"]["customdata"]
    progress = drawn[2]
    assert progress["layout"]["shapes"][0]["y0"] == pytest.approx(searched["grid"]["latency"])
    assert searched["grid"]["id"] in texts(at, "caption")
    assert "Parameter importances" in texts(at, "markdown")

    # one click pins it on the Compare page
    widget(at, "button", "Pin it on Compare").click().run()
    assert params(at)["pins"].split(",")[-1] == best["id"]
    assert widget(at, "button", "Pin it on Compare").disabled
    compare = run_page("compare", pins=params(at)["pins"])
    assert widget(compare, "multiselect", "Pinned variants").value == [best["id"]]
    # one click exports it: the Export page with it selected
    widget(at, "button", "Export it").click().run()
    assert not at.exception
    assert f"the selected variant **{best['method']} @ {best['split']}** (`{best['id']}`)" in texts(at, "markdown")

    # one click re-runs the best with more training seeds (jobs queued here, not run); its spread shows once they are in
    base = PROFILES.get("smoke").base_config(small_data.fingerprint, width=0.125)
    knobs = {**PROFILES.get("smoke").prune.knobs(), "snapshot": 0, "encoder": "none", "bits": 4}
    pruned_row = {**best.to_dict(), "method": "three_step", "split": "conv4_x", "knobs": knobs,
                  "id": VariantConfig.make("three_step", "conv4_x", base, **knobs).id,
                  "device_flops": best["device_flops"] / 2}
    ResultsStore().put(pruned_row)
    study = optuna.load_study(study_name=searched["name"], storage=storage())
    study.add_trial(complete(pruned_row, SearchRequest.of("smoke", PI3, GPU, RATE, drop=DROP).environment(), DROP))
    queued: list = []
    monkeypatch.setattr(ui, "start_jobs", lambda specs, priorities=0: queued.extend(specs))
    at = run_page("search")
    assert f"`{pruned_row['id']}`" in at.success[0].value
    widget(at, "button", "Re-run it with 2 more seeds").click().run()
    assert [s.knobs.get("replicate") for s in queued] == [1, 2], [e.value for e in at.error]
    assert {(s.method, s.split) for s in queued} == {("three_step", "conv4_x")}
    for spec, val in zip(queued, (pruned_row["deployed_val_accuracy"] - 0.02, pruned_row["deployed_val_accuracy"]
                                  + 0.02), strict=True):
        ResultsStore().put({**pruned_row, "id": spec.id, "knobs": spec.knobs, "deployed_val_accuracy": val})
    at = run_page("search")
    assert (f"Over 3 training seeds: validation {pruned_row['deployed_val_accuracy']:.2%} ± 2.00%"
            in texts(at, "caption"))
    assert not [b for b in at.button if b.label.startswith("Re-run it")]  # three seeds measured: nothing to add

    # the start button starts the study in the background (no process here), and is refused while it runs
    started: list = []
    monkeypatch.setattr(launch, "start", lambda request, name, cache=None: started.append((request, name, cache)))
    at = run_page("search")
    at.radio(key="search_budget_kind").set_value("trials").run()
    at.number_input(key="search_trials").set_value(12).run()
    assert widget(at, "button", "Resume the study").label == "Resume the study"
    widget(at, "button", "Resume the study").click().run()
    request, name, cache = started[0]
    assert name == searched["name"] and request.argv()[-2:] == ["--trials", "12"]
    assert request.config(PROFILES.get("smoke").base_config(small_data.fingerprint, width=0.125)).name == name
    monkeypatch.setattr(launch, "running", lambda name, cache=None: True)
    at = run_page("search")
    assert widget(at, "button", "Resume the study").disabled and not widget(at, "button", "Stop").disabled
    assert "Running since" in texts(at, "info")


def test_without_a_study_or_with_a_damaged_file_the_page_says_so(fresh_cache: Path, small_data: ImageData) -> None:
    at = run_page("search")
    assert "No study for this environment yet" in texts(at, "info")
    assert not storage_path(fresh_cache).exists()  # looking creates nothing
    assert widget(at, "button", "Start the study")
    # a study of this environment, but no rows of the base model in the results store
    base = PROFILES.get("smoke").base_config(small_data.fingerprint, width=0.125)
    rows = synthetic_rows(base.id, 6, dataset_fingerprint=small_data.fingerprint)
    env = SearchRequest.of("smoke", PI3, GPU, RATE, drop=DROP).environment()
    study = optuna.create_study(storage=storage(fresh_cache), study_name=study_name(small_data))
    study.add_trial(pruned(rows[3]))
    at = run_page("search")
    assert "No trial meets the accuracy threshold" in texts(at, "info")
    assert "No rows of this base model" in texts(at, "caption")
    assert "Optuna's views need 3 complete trials; 0 so far" in texts(at, "caption")
    study.add_trial(complete(rows[0], env, DROP))
    assert f"`{rows[0]['id']}`" in run_page("search").success[0].value
    # another objective is another study
    other = run_page("search")
    other.radio(key="search_objective").set_value("front").run()
    assert f"study `{study_name(small_data, 'front')}`" in texts(other, "caption")
    assert "No study for this environment yet" in texts(other, "info")
    # a damaged studies file: one line, no traceback
    path = storage_path(fresh_cache)
    path.unlink()
    path.write_bytes(b"this is not a database" * 200)
    at = run_page("search")
    assert not at.exception
    assert "cannot be read" in at.error[0].value and "\n" not in at.error[0].value
