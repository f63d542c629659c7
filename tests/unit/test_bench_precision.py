"""bench/bench_precision.py pairs the variants two base models share (same method, split and knobs) and summarises
the accuracy difference and bits ratio per method."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.bench_precision import comparison, minutes_text, paired

COLUMNS = ("id", "base_id", "method", "split", "knobs", "accuracy", "bits_actual")
ROWS = [
    ("v1", "fp32", "original", "conv4_x", {"bits": 8}, 0.85, 1000.0),
    ("v2", "fp32", "original", "conv5_x", {"bits": 8}, 0.86, 500.0),
    ("v3", "fp32", "three_step", "conv4_x", {"bits": 8, "snapshot": 1}, 0.84, 300.0),
    ("v4", "bf16", "original", "conv4_x", {"bits": 8}, 0.855, 1100.0),
    ("v5", "bf16", "original", "conv5_x", {"bits": 8}, 0.85, 400.0),
    ("v6", "bf16", "three_step", "conv4_x", {"snapshot": 1, "bits": 8}, 0.83, 330.0),
    ("v7", "bf16", "three_step", "conv4_x", {"bits": 8, "snapshot": 2}, 0.80, 200.0),  # no fp32 twin
]


def test_variants_pair_on_method_split_and_knobs() -> None:
    pairs = paired(pd.DataFrame(ROWS, columns=COLUMNS), "fp32", "bf16")
    assert len(pairs) == 3  # knobs match whatever their order; the unpaired snapshot is left out
    assert list(pairs["id_ref"]) == ["v1", "v2", "v3"] and list(pairs["id_other"]) == ["v4", "v5", "v6"]
    out = comparison(pairs).set_index("method")
    assert out.loc["original", "variants"] == 2
    assert out.loc["original", "median_points"] == pytest.approx(-0.25)  # (+0.5 - 1.0) / 2
    assert out.loc["original", "min_points"] == pytest.approx(-1.0)
    assert out.loc["original", "max_points"] == pytest.approx(0.5)
    assert out.loc["original", "median_bits_ratio"] == pytest.approx((1.1 + 0.8) / 2)
    assert out.loc["three_step", "median_points"] == pytest.approx(-1.0)
    assert out.loc["three_step", "median_bits_ratio"] == pytest.approx(1.1)


def test_worker_minutes_show_each_side_on_its_own() -> None:
    text = minutes_text(["original", "three_step"], {"three_step": 16.64}, {"original": 1.8, "three_step": 19.2})
    assert text == "original – / 1.8, three_step 16.6 / 19.2"
