"""Every selection path chooses on validation accuracy, never on test accuracy: on a table where the two disagree so
that each choice flips, every function follows validation (and would follow test were the columns swapped)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic import BAD, GOOD, METHODS, flipped_rows

from engine.cli import main
from engine.errors import UserError
from engine.figures import plane_figure
from engine.latency import DEVICES
from engine.pareto import (
    DECISION_COLUMN,
    NO_VALIDATION,
    best_per_method,
    best_variant,
    decision_accuracy,
    latency_vs_rate,
    meets_threshold,
    validation_label,
    validation_threshold,
)
from engine.report import best_per_split, claim_by_split, dominated_points, qualifying

PI3, GPU = DEVICES.get("pi3"), DEVICES.get("rtx2080ti")
NEED = 0.90  # the base model's validation accuracy (0.92) minus the default 2 points


def flipped() -> pd.DataFrame:
    return pd.DataFrame(flipped_rows("b"))


def swapped(table: pd.DataFrame) -> pd.DataFrame:
    """The table as a path reading test accuracy would see it: validation and test exchanged."""
    return table.assign(accuracy=table[DECISION_COLUMN], **{DECISION_COLUMN: table["accuracy"]})


def prefixes(ids: object) -> set[str]:
    """The kinds ("v" or "t") of the chosen ids."""
    return {i.split("-")[0] for i in ids}


def test_the_threshold_is_the_base_models_validation_accuracy_minus_the_drop() -> None:
    assert validation_threshold(flipped()) == pytest.approx(NEED)
    assert validation_threshold(flipped(), 0.05) == pytest.approx(0.87)
    assert validation_threshold(flipped().drop(columns="base_val_accuracy")) is None
    mixed = flipped().assign(base_val_accuracy=[0.92, 0.9] * 8)
    with pytest.raises(UserError, match="narrow them to one base model"):
        validation_threshold(mixed)


def test_qualifying_rows_and_meets_threshold_follow_validation() -> None:
    t = flipped()
    assert prefixes(qualifying(t, NEED)["id"]) == {"v"} and len(qualifying(t, NEED)) == 8
    assert prefixes(qualifying(swapped(t), NEED)["id"]) == {"t"}
    assert prefixes(t[meets_threshold(t, NEED)]["id"]) == {"v"}
    assert (decision_accuracy(t) == t[DECISION_COLUMN]).all()


def test_report_tables_follow_validation() -> None:
    t = flipped()
    best = best_per_split(t, NEED)
    assert prefixes(best["id"]) == {"v"} and len(best) == 8
    assert (best[DECISION_COLUMN] == GOOD).all() and (best["accuracy"] == BAD).all()  # both shown
    assert prefixes(best_per_split(swapped(t), NEED)["id"]) == {"t"}
    claim = claim_by_split(t, NEED)
    assert claim["bits"].tolist() == [1e4, 2e4]  # the v rows' bits (the t rows send half)
    assert claim_by_split(swapped(t), NEED)["bits"].tolist() == [5e3, 1e4]
    assert prefixes(dominated_points(t, NEED)["id"]) <= {"v"}
    assert prefixes(dominated_points(t, NEED)["by_id"]) <= {"v"}


@pytest.mark.parametrize("rate", [8e3, 8e5, 8e8])
def test_best_variant_best_per_method_and_latency_curves_follow_validation(rate: float) -> None:
    t = flipped()
    assert best_variant(t, PI3, GPU, rate, NEED)["id"].startswith("v-")
    assert best_variant(swapped(t), PI3, GPU, rate, NEED)["id"].startswith("t-")
    for method in METHODS:
        assert best_variant(t, PI3, GPU, rate, NEED, method=method)["id"].startswith("v-")
    per = best_per_method(t, PI3, GPU, rate, NEED)
    assert prefixes(per["id"]) == {"v"} and len(per) == len(METHODS)
    curves = latency_vs_rate(t, PI3, GPU, [rate, 2 * rate], NEED)
    assert prefixes(curves["id"]) == {"v"} and (curves[DECISION_COLUMN] == GOOD).all()
    assert prefixes(latency_vs_rate(swapped(t), PI3, GPU, [rate], NEED)["id"]) == {"t"}


def test_plane_figure_greys_and_fronts_on_validation() -> None:
    t = flipped()
    traces = {tr.name: tr for tr in plane_figure(t, None, threshold=NEED).data}
    drawn = {i for m in METHODS if m in traces for i in traces[m].ids}
    assert prefixes(drawn) == {"v"} and len(drawn) == 8
    assert prefixes(traces["below the accuracy threshold"].ids) == {"t"}
    front = set(zip(traces["Pareto front"].x, traces["Pareto front"].y, strict=True))
    v = t[t["id"].str.startswith("v-")]
    assert front <= set(zip(v["device_flops"], v["bits_actual"], strict=True))


def test_rows_without_a_validation_figure_are_named_and_never_chosen() -> None:
    old = flipped().drop(columns=DECISION_COLUMN)
    assert (validation_label(old) == NO_VALIDATION).all()
    assert (validation_label(flipped()) == "").all()
    assert qualifying(old, None).empty and qualifying(old, 0.0).empty
    assert best_variant(old, PI3, GPU, 8e5, None) is None
    assert latency_vs_rate(old, PI3, GPU, [8e5], None).empty
    mixed = flipped().assign(**{DECISION_COLUMN: [np.nan] * 8 + [GOOD] * 8})
    assert set(qualifying(mixed, NEED)["id"]) == set(mixed["id"][8:])
    traces = {tr.name: tr for tr in plane_figure(old, None, threshold=NEED).data}
    assert set(traces) == {NO_VALIDATION}  # no method trace, no front: nothing is chosen
    assert len(traces[NO_VALIDATION].ids) == 16


def test_best_command_follows_validation_with_the_default_drop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))
    from engine.store import ResultsStore

    ResultsStore().put_many(flipped().to_dict("records"))
    assert main(["best", "--rate", "40kB/s", "--json"]) == 0  # no --threshold: base validation - 2 points
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == pytest.approx(NEED)
    assert prefixes(r["id"] for r in out["per_method"]) == {"v"} and len(out["per_method"]) == len(METHODS)
    assert all(r[DECISION_COLUMN] == GOOD and r["accuracy"] == BAD for r in out["per_method"])
    assert main(["best", "--rate", "40kB/s", "--threshold", "0.9", "--json"]) == 0
    assert prefixes(r["id"] for r in json.loads(capsys.readouterr().out)["per_method"]) == {"v"}
    assert main(["best", "--rate", "40kB/s", "--any-accuracy", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] is None and prefixes(r["id"] for r in out["per_method"]) == {"t"}  # cheaper, any acc.
    assert main(["best", "--rate", "40kB/s"]) == 0
    text = capsys.readouterr().out
    assert "validation accuracy >= 90.0%" in text and "validation" in text and "test" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["best", "--rate", "40kB/s", "--threshold", "0.9", "--any-accuracy"])
    assert exit_info.value.code == 2
