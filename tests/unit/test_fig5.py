"""Fig. 5 as pure functions of a hand-made results table: the smallest JSCC k meeting the validation threshold, BSC
channel bits, separate coding with its actual bitstream and its ideal length, the verdict, a stricter threshold and
the mismatch curve."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from synthetic import W, synthetic_rows

from engine.fig5 import SCHEMES, best_schemes, fig5_curves, fig5_report, mismatch_curve, verdict
from engine.store import rows_to_frame

LSC_ACTUAL, LSC_IDEAL = "learned source coding (actual)", "learned source coding (ideal)"


def h2(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def awgn_cost(bits: float, snr_db: float) -> float:
    return bits / (W * math.log2(1 + 10 ** (snr_db / 10)))


def test_fig5_awgn_picks_the_smallest_k_meeting_the_validation_threshold() -> None:
    table = rows_to_frame(synthetic_rows())
    curves = fig5_curves(table, "awgn", drop=0.02, bandwidth_hz=W)
    jscc = curves[curves["scheme"] == "JSCC"].set_index("condition")
    assert jscc["uses"].to_dict() == {0.0: 32, 10.0: 8, 20.0: 2}  # the pruned row is not Fig. 5's
    assert jscc["cost"].to_dict() == pytest.approx({0.0: 32e-6, 10.0: 8e-6, 20.0: 2e-6})
    assert jscc.loc[10.0, "accuracy"] == 0.82 and jscc.loc[0.0, "id"] == "awgn32"
    lsc = curves[curves["scheme"] == LSC_ACTUAL].set_index("condition")
    assert set(lsc["bits"]) == {24.5}  # d=8 misses the 80 % validation threshold
    assert lsc.loc[10.0, "cost"] == pytest.approx(24.5 / (W * math.log2(11)))
    huff = curves[curves["scheme"] == "8-bit Huffman feature (actual)"].set_index("condition")
    assert huff.loc[20.0, "cost"] == pytest.approx(16000 / (W * math.log2(101)))
    png = curves[curves["scheme"] == "PNG input"].set_index("condition")
    assert png.loc[0.0, "cost"] == pytest.approx(18000 / W)
    best = best_schemes(curves).set_index("condition")["scheme"].to_dict()
    assert best == {0.0: LSC_ACTUAL, 10.0: LSC_ACTUAL, 20.0: "JSCC"}
    assert curves["meets"].all()


@pytest.mark.parametrize("channel", ["awgn", "bsc"])
def test_separate_coding_at_capacity_with_its_actual_bitstream_and_its_ideal_length(channel: str) -> None:
    curves = fig5_curves(rows_to_frame(synthetic_rows()), channel, drop=0.02, bandwidth_hz=W)
    assert list(curves["scheme"].unique()) == list(SCHEMES)  # every scheme, in the order of SCHEMES
    at = curves.set_index(["condition", "scheme"])
    for c in curves["condition"].unique():
        def cost(bits: float, c: float = c) -> float:
            return awgn_cost(bits, c) if channel == "awgn" else bits / (1 - h2(c))

        # the ideal pick is the qualifying reference too: d=8's 8 ideal bits miss the validation threshold
        assert at.loc[(c, LSC_ACTUAL), ["bits", "id"]].tolist() == [24.5, "sc16"]
        assert at.loc[(c, LSC_IDEAL), ["bits", "id"]].tolist() == [14.0, "sc16"]
        assert at.loc[(c, LSC_ACTUAL), "cost"] == pytest.approx(cost(24.5))
        assert at.loc[(c, LSC_IDEAL), "cost"] == pytest.approx(cost(14.0))
        assert at.loc[(c, LSC_IDEAL), "accuracy"] == at.loc[(c, LSC_ACTUAL), "accuracy"] == 0.80
        assert at.loc[(c, "8-bit Huffman feature (ideal)"), "cost"] == pytest.approx(cost(15000.0))
        assert at.loc[(c, "8-bit Huffman feature (actual)"), "cost"] == pytest.approx(cost(16000.0))


def test_fig5_bsc_counts_channel_bits() -> None:
    table = rows_to_frame(synthetic_rows())
    curves = fig5_curves(table, "bsc", drop=0.02)
    at = curves.set_index(["condition", "scheme"])
    assert at.loc[(0.01, "JSCC"), "cost"] == 16 and at.loc[(0.1, "JSCC"), "cost"] == 64
    assert at.loc[(0.1, LSC_ACTUAL), "cost"] == pytest.approx(24.5 / (1 - h2(0.1)))
    assert at.loc[(0.1, "PNG input"), "cost"] == pytest.approx(18000 / (1 - h2(0.1)))
    assert not at.loc[(0.01, "JSCC"), "meets"] and at.loc[(0.1, "JSCC"), "meets"]  # chosen on validation
    best = best_schemes(curves).set_index("condition")["scheme"].to_dict()
    assert best == {0.01: "JSCC", 0.1: LSC_ACTUAL}  # what is actually sent
    ideal = best_schemes(curves, ideal=True).set_index("condition")["scheme"].to_dict()
    assert ideal == {0.01: LSC_IDEAL, 0.1: LSC_IDEAL}  # 14 ideal bits at p = 0.01: 15.2 channel bits < 16
    report = fig5_report(table, ("awgn", "bsc"))
    assert all(line in report.splitlines() for line in verdict(curves) + verdict(fig5_curves(table, "awgn")))


def ratio(jscc: float, separate: float) -> str:
    return f"({jscc / separate:.3g}x)"


def test_the_verdict_names_the_winner_at_each_condition_and_by_how_much() -> None:
    table = rows_to_frame(synthetic_rows())
    summary, *at = verdict(fig5_curves(table, "awgn", bandwidth_hz=W))
    assert summary == ("AWGN: JSCC is at or below every separate scheme, actual and ideal, at 20 dB SNR; costs more "
                       "than the best separate scheme, actual and ideal, at 0 dB SNR and 10 dB SNR.")
    assert [s.split(",")[0] for s in at] == ["At 0 dB SNR", "At 10 dB SNR", "At 20 dB SNR"]
    assert "JSCC (32 complex channel uses: 32 µs) costs more than" in at[0]
    assert f"learned source coding (actual) at 24.5 µs {ratio(32e-6, awgn_cost(24.5, 0))}" in at[0]
    assert f"learned source coding (ideal) at 14 µs {ratio(32e-6, awgn_cost(14, 0))}" in at[0]
    assert "JSCC (2 complex channel uses: 2 µs) is cheaper than the best separate scheme sent with its actual" in at[2]
    assert f"and is cheaper than the best with its ideal length, learned source coding (ideal) at 2.1 µs " \
           f"{ratio(2e-6, awgn_cost(14, 20))}" in at[2]

    summary, *at = verdict(fig5_curves(table, "bsc"))
    assert summary == ("BSC: JSCC is at or below the best actual bitstream but above the best ideal length at p = "
                       "0.01; costs more than the best separate scheme, actual and ideal, at p = 0.1.")
    assert at[0].startswith("At p = 0.01, JSCC (16 channel bits) is cheaper than the best separate scheme sent with "
                            f"its actual bitstream, learned source coding (actual) at 26.7 channel bits "
                            f"{ratio(16, 24.5 / (1 - h2(0.01)))}, but costs more than")
    assert f"learned source coding (ideal) at 15.2 channel bits {ratio(16, 14 / (1 - h2(0.01)))}" in at[0]
    assert "JSCC (64 channel bits) costs more than" in at[1] and "(ideal) at 26.4 channel bits" in at[1]


def test_the_verdict_flips_when_jscc_costs_more_or_less() -> None:
    table = rows_to_frame(synthetic_rows())
    curves = fig5_curves(table, "awgn", bandwidth_hz=W)
    dearer = curves.assign(cost=curves["cost"].where(curves["scheme"] != "JSCC", curves["cost"] * 10))
    assert verdict(dearer)[0] == ("AWGN: JSCC costs more than the best separate scheme, actual and ideal, at 0 dB SNR, "
                                  "10 dB SNR and 20 dB SNR.")
    assert "JSCC (2 complex channel uses: 20 µs) costs more than" in verdict(dearer)[3]
    rows = synthetic_rows()  # k = 2 no longer qualifies at 20 dB: k = 8 there, 8 µs, above 3.68 µs and 2.1 µs
    next(r for r in rows if r["id"] == "awgn2")["curve_val_accuracy"][2] = 0.79
    flipped = verdict(fig5_curves(rows_to_frame(rows), "awgn", bandwidth_hz=W))
    assert "at or below" not in flipped[0] and flipped[3].startswith("At 20 dB SNR, JSCC (8 complex channel uses")
    bsc = fig5_curves(table, "bsc")
    cheaper = bsc.assign(cost=bsc["cost"].where(bsc["scheme"] != "JSCC", bsc["cost"] / 2))  # 8 and 32 channel bits
    assert verdict(cheaper)[0] == ("BSC: JSCC is at or below every separate scheme, actual and ideal, at p = 0.01; "
                                   "is at or below the best actual bitstream but above the best ideal length at p = "
                                   "0.1.")


def test_a_stricter_threshold_and_the_mismatch_curve() -> None:
    table = rows_to_frame(synthetic_rows())
    curves = fig5_curves(table, "awgn", drop=0.0)  # validation threshold 82 %
    jscc = curves[curves["scheme"] == "JSCC"].set_index("condition")["uses"].to_dict()
    assert jscc == {10.0: 8, 20.0: 8}  # nothing reaches 82 % at 0 dB
    assert not {LSC_ACTUAL, LSC_IDEAL} & set(curves["scheme"])
    summary, at0, _, at20 = verdict(curves)
    assert summary.endswith("has no model meeting the validation threshold at 0 dB SNR.")
    assert at0 == ("At 0 dB SNR no JSCC model meets the validation threshold; the cheapest separate scheme is 8-bit "
                   "Huffman feature (actual) at 16 ms.")
    assert "8-bit Huffman feature (ideal) at 2.25 ms" in at20  # the best separate schemes left
    curve = mismatch_curve(table, "awgn8")
    assert curve["accuracy"].tolist() == [0.74, 0.82, 0.83] and curve["condition"].tolist() == [0.0, 10.0, 20.0]
    assert mismatch_curve(table, "nope").empty
    assert fig5_curves(pd.DataFrame(), "awgn").empty and verdict(fig5_curves(pd.DataFrame(), "awgn")) == []
