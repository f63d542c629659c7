"""engine.report on small hand-made tables with known answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from engine.errors import UserError
from engine.report import (
    best_per_split,
    claim_by_split,
    composed,
    composed_against_baselines,
    dominated_points,
    dominates,
    latency_growth,
    provably_dominated,
)


def table(rows: list[tuple[str, str, str, float, float, float]]) -> pd.DataFrame:
    """Rows whose validation accuracy equals their test accuracy (the flipped table is in test_decisions.py)."""
    out = pd.DataFrame(rows, columns=["id", "method", "split", "accuracy", "device_flops", "bits_actual"])
    return out.assign(deployed_val_accuracy=out["accuracy"])


ROWS = table([
    ("o3", "original", "conv3_x", 0.90, 30.0, 4000.0),
    ("o4", "original", "conv4_x", 0.90, 50.0, 2000.0),
    ("t3a", "three_step", "conv3_x", 0.89, 20.0, 64.0),
    ("t3b", "three_step", "conv3_x", 0.80, 10.0, 8.0),  # under the threshold
    ("t4", "three_step", "conv4_x", 0.89, 40.0, 40.0),
    ("b3", "bottlenet_pp", "conv3_x", 0.895, 30.0, 500.0),
    ("b4", "bottlenet_pp", "conv4_x", 0.895, 40.0, 30.0),  # beats t4: same FLOPs, fewer bits
])


def test_dominates_needs_one_strict_improvement() -> None:
    assert dominates((1, 1), (1, 2)) and dominates((1, 1), (2, 1)) and dominates((1, 1), (2, 2))
    assert not dominates((1, 1), (1, 1)) and not dominates((1, 3), (2, 2))


def test_best_per_split_takes_fewest_bits_above_the_threshold() -> None:
    best = best_per_split(ROWS, threshold=0.88)
    assert list(zip(best["split"], best["method"], best["id"], strict=True)) == [
        ("conv3_x", "bottlenet_pp", "b3"), ("conv3_x", "original", "o3"), ("conv3_x", "three_step", "t3a"),
        ("conv4_x", "bottlenet_pp", "b4"), ("conv4_x", "original", "o4"), ("conv4_x", "three_step", "t4")]
    assert best_per_split(ROWS, threshold=None).set_index("id").loc["t3b", "bits"] == 8.0


def test_claim_holds_where_no_rival_dominates_and_names_the_rival_where_one_does() -> None:
    claim = claim_by_split(ROWS, threshold=0.88).set_index("split")
    assert claim["holds"].tolist() == [True, False] and claim.loc["conv3_x", "bits"] == 64.0
    assert claim.loc["conv4_x", "dominated_by"].startswith("bottlenet_pp")
    low = ROWS.assign(deployed_val_accuracy=ROWS["accuracy"].where(ROWS["id"] != "t4", 0.5))
    none = claim_by_split(low, threshold=0.88).set_index("split")
    assert none.loc["conv4_x", "holds"] is None and math.isnan(none.loc["conv4_x", "bits"])


def test_dominated_points_lists_each_beaten_point_once() -> None:
    beaten = dominated_points(ROWS, threshold=0.88)
    assert list(beaten["id"]) == ["t4"] and list(beaten["by_id"]) == ["b4"]
    assert dominated_points(ROWS, threshold=0.95).empty


def test_empty_tables_and_missing_columns() -> None:
    assert best_per_split(ROWS.iloc[:0], 0.9).empty and claim_by_split(ROWS.iloc[:0], 0.9).empty
    assert claim_by_split(ROWS[ROWS["method"] != "three_step"], 0.88).empty  # no split where three_step ran
    assert dominated_points(pd.DataFrame(), None).empty
    with pytest.raises(UserError, match="bits_actual"):
        best_per_split(ROWS.drop(columns="bits_actual"), 0.9)


def test_a_variant_is_provably_dominated_only_by_a_point_below_its_bounds() -> None:
    measured = [(100.0, 8.0)]
    assert provably_dominated(200.0, 8.0, measured)  # fewer FLOPs, as few bits
    assert provably_dominated(100.0, 16.0, measured)  # as few FLOPs, fewer bits
    assert not provably_dominated(100.0, 8.0, measured)  # equal: it could tie, not lose
    assert not provably_dominated(50.0, 64.0, measured)  # fewer FLOPs itself
    assert not provably_dominated(200.0, 0.0, measured)  # its bits could undercut
    assert not provably_dominated(200.0, 8.0, [])


def _row(i: str, method: str, flops: float, sent: float, val: float, level: int = -1, **knobs: object) -> dict:
    return {"id": i, "method": method, "split": "conv4_x", "accuracy": val - 0.01, "deployed_val_accuracy": val,
            "device_flops": flops, "bits_actual": sent, "level": level, "knobs": knobs}


def test_the_composed_row_is_set_against_every_qualifying_baseline() -> None:
    table = pd.DataFrame([
        _row("pc", "three_step", 50.0, 20.0, 0.85, level=1, encoder="two_step"),  # pruned and coded
        _row("pc-low", "three_step", 30.0, 10.0, 0.70, level=2, encoder="two_step"),  # below the threshold
        _row("p8", "three_step", 50.0, 5000.0, 0.86, level=1, encoder="none", bits=8),  # pruned, 8-bit
        _row("u", "three_step", 100.0, 15.0, 0.86, encoder="two_step"),  # coded, unpruned
        _row("o", "original", 100.0, 9000.0, 0.86, bits=8),
        _row("b", "bottlenet_pp", 101.0, 12.0, 0.85, ratio=64),  # fewer bits than pc
        _row("t", "two_step_pruning", 40.0, 4000.0, 0.80),  # below the threshold
    ])
    assert composed(table).tolist() == [True, True, False, False, False, False, False]
    got = composed_against_baselines(table, 0.84).iloc[0]
    assert got["id"] == "pc" and got["dominated"] == 1 and got["rivals"] == 2
    assert got["not_dominated"] == "bottlenet_pp (0.00 MFLOPs, 12.0 bits: fewer bits)"
    none = composed_against_baselines(table, 0.90).iloc[0]
    assert none["id"] is None and "no pruned and coded row" in none["not_dominated"]


def test_latency_growth_reads_the_worst_poor_rate_and_the_growth_to_the_lowest() -> None:
    kbps = 8e3
    curves = pd.DataFrame({"method": ["three_step"] * 3 + ["original"] * 3,
                           "rate": [10 * kbps, 40 * kbps, 100 * kbps] * 2,
                           "latency": [0.12, 0.09, 0.05, 2.0, 0.6, 0.3]})
    got = latency_growth(curves, poor_bps=40 * kbps, good_bps=100 * kbps).set_index("method")
    assert got.loc["three_step", "worst_poor_s"] == 0.12 and got.loc["original", "worst_poor_s"] == 2.0
    assert got.loc["three_step", "growth"] == pytest.approx(2.4)
    assert got.loc["original", "growth"] == pytest.approx(2.0 / 0.3)
    assert got.loc["original", "lowest_rate"] == 10 * kbps
    without_good = latency_growth(curves[curves["rate"] < 100 * kbps], 40 * kbps, 100 * kbps)
    assert without_good["growth"].isna().all() and latency_growth(curves.iloc[:0], 1.0, 2.0).empty
