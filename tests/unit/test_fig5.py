"""Fig. 5 as pure functions of a hand-made results table: the smallest JSCC k meeting the validation threshold, BSC
channel bits, a stricter threshold and the mismatch curve."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from synthetic import W, synthetic_rows

from engine.fig5 import best_schemes, fig5_curves, fig5_report, mismatch_curve
from engine.store import rows_to_frame


def test_fig5_awgn_picks_the_smallest_k_meeting_the_validation_threshold() -> None:
    table = rows_to_frame(synthetic_rows())
    curves = fig5_curves(table, "awgn", drop=0.02, bandwidth_hz=W)
    jscc = curves[curves["scheme"] == "JSCC"].set_index("condition")
    assert jscc["uses"].to_dict() == {0.0: 32, 10.0: 8, 20.0: 2}  # the pruned row is not Fig. 5's
    assert jscc["cost"].to_dict() == pytest.approx({0.0: 32e-6, 10.0: 8e-6, 20.0: 2e-6})
    assert jscc.loc[10.0, "accuracy"] == 0.82 and jscc.loc[0.0, "id"] == "awgn32"
    lsc = curves[curves["scheme"] == "learned source coding"].set_index("condition")
    assert set(lsc["bits"]) == {24.5}  # d=8 misses the 80 % validation threshold
    assert lsc.loc[10.0, "cost"] == pytest.approx(24.5 / (W * math.log2(11)))
    huff = curves[curves["scheme"] == "8-bit Huffman feature"].set_index("condition")
    assert huff.loc[20.0, "cost"] == pytest.approx(16000 / (W * math.log2(101)))
    png = curves[curves["scheme"] == "PNG input"].set_index("condition")
    assert png.loc[0.0, "cost"] == pytest.approx(18000 / W)
    best = best_schemes(curves).set_index("condition")["scheme"].to_dict()
    assert best == {0.0: "learned source coding", 10.0: "learned source coding", 20.0: "JSCC"}
    assert curves["meets"].all()


def test_fig5_bsc_counts_channel_bits() -> None:
    table = rows_to_frame(synthetic_rows())
    curves = fig5_curves(table, "bsc", drop=0.02)
    at = curves.set_index(["condition", "scheme"])
    assert at.loc[(0.01, "JSCC"), "cost"] == 16 and at.loc[(0.1, "JSCC"), "cost"] == 64
    h = -0.1 * math.log2(0.1) - 0.9 * math.log2(0.9)
    assert at.loc[(0.1, "learned source coding"), "cost"] == pytest.approx(24.5 / (1 - h))
    assert at.loc[(0.1, "PNG input"), "cost"] == pytest.approx(18000 / (1 - h))
    assert not at.loc[(0.01, "JSCC"), "meets"] and at.loc[(0.1, "JSCC"), "meets"]  # chosen on validation
    best = best_schemes(curves).set_index("condition")["scheme"].to_dict()
    assert best == {0.01: "JSCC", 0.1: "learned source coding"}
    report = fig5_report(table, ("awgn", "bsc"))
    assert "at or below learned source coding + ideal channel coding at snr_db [20.0]" in report
    assert "above it at p [0.1]" in report


def test_a_stricter_threshold_and_the_mismatch_curve() -> None:
    table = rows_to_frame(synthetic_rows())
    curves = fig5_curves(table, "awgn", drop=0.0)  # validation threshold 82 %
    jscc = curves[curves["scheme"] == "JSCC"].set_index("condition")["uses"].to_dict()
    assert jscc == {10.0: 8, 20.0: 8}  # nothing reaches 82 % at 0 dB
    assert "learned source coding" not in set(curves["scheme"])
    curve = mismatch_curve(table, "awgn8")
    assert curve["accuracy"].tolist() == [0.74, 0.82, 0.83] and curve["condition"].tolist() == [0.0, 10.0, 20.0]
    assert mismatch_curve(table, "nope").empty
    assert fig5_curves(pd.DataFrame(), "awgn").empty
