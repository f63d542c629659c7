import math

import numpy as np
import pandas as pd
import pytest

from engine.errors import UserError
from engine.latency import DEVICES, Overheads, custom_device, latency_table
from engine.pareto import (
    RATE_COLUMNS,
    accuracy_threshold_default,
    best_per_method,
    best_variant,
    compare_table,
    latency_vs_rate,
    meets_threshold,
    pareto_front,
    validation_threshold,
)

PI3, GPU = DEVICES.get("pi3"), DEVICES.get("rtx2080ti")
SLOW, FAST = 8000.0, 1e9  # 1 kB/s and 1 Gbit/s


def plane() -> pd.DataFrame:
    """Six points in (device_flops, bits, accuracy); the (flops, bits) front is a, b, e."""
    return pd.DataFrame(
        {
            "id": list("abcdef"),
            "device_flops": [1.0, 2.0, 3.0, 2.0, 4.0, 5.0],
            "bits_actual": [10.0, 5.0, 5.0, 8.0, 1.0, 2.0],
            "accuracy": [0.80, 0.85, 0.90, 0.84, 0.70, 0.91],
        },
        index=[10, 11, 12, 13, 14, 15],
    )


def test_pareto_front_min_min():
    front = pareto_front(plane(), "device_flops", "bits_actual")
    assert front["id"].tolist() == ["a", "b", "e"]
    assert front.index.tolist() == [10, 11, 14]  # original index kept


def test_pareto_front_min_max():
    front = pareto_front(plane(), "device_flops", "accuracy", minimize=(True, False))
    assert front["id"].tolist() == ["a", "b", "c", "f"]
    front = pareto_front(plane(), "bits_actual", "accuracy", minimize=(True, False))  # sorted by x ascending
    assert front["id"].tolist() == ["e", "f"]


def test_pareto_front_ties_and_missing():
    t = plane()
    dup = t.loc[[11]].assign(id="b2")
    t = pd.concat([t, dup, pd.DataFrame({"id": ["nan"], "device_flops": [0.5], "bits_actual": [np.nan]})])
    front = pareto_front(t, "device_flops", "bits_actual")
    assert front["id"].tolist() == ["a", "b", "b2", "e"]  # equal points do not dominate each other
    same_x = pd.DataFrame({"id": ["p", "q"], "x": [1.0, 1.0], "y": [2.0, 3.0]})
    assert pareto_front(same_x, "x", "y")["id"].tolist() == ["p"]


def _brute_force(xs: np.ndarray, ys: np.ndarray) -> list[int]:
    keep = []
    for i in range(len(xs)):
        dominated = any(
            xs[j] <= xs[i] and ys[j] <= ys[i] and (xs[j] < xs[i] or ys[j] < ys[i]) for j in range(len(xs))
        )
        if not dominated:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_matches_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    t = pd.DataFrame({"x": rng.integers(0, 8, n).astype(float), "y": rng.integers(0, 8, n).astype(float)})
    front = pareto_front(t, "x", "y")
    assert sorted(front.index) == _brute_force(t["x"].to_numpy(), t["y"].to_numpy())
    assert front["x"].is_monotonic_increasing
    flipped = pareto_front(t.assign(y=-t["y"]), "x", "y", minimize=(True, False))  # maximising -y
    assert sorted(flipped.index) == sorted(front.index)


def test_pareto_front_empty_and_errors():
    assert pareto_front(plane().iloc[:0], "device_flops", "bits_actual").empty
    assert pareto_front(pd.DataFrame(), "device_flops", "bits_actual").empty
    with pytest.raises(UserError, match="latency"):
        pareto_front(plane(), "latency", "bits_actual")


def variants() -> pd.DataFrame:
    """A lookup table in the paper's units, Pi 3 + RTX 2080 Ti: PNG ~ 20 kbit, ResNet18 ~ 1.1 GFLOPs."""
    rows = [
        # id, method, split, device_flops, server_flops, device_memory_bytes, bits, accuracy
        ("srv", "original", "server_only", 0.0, 1.1e9, 0.0, 2e4, 0.95),
        ("dev", "original", "device_only", 1.1e9, 0.0, 1.5e9, 4.0, 0.95),  # does not fit the Pi
        ("deep", "three_step", "conv4_x", 0.6e9, 0.1e9, 5e8, 500.0, 0.94),
        ("shallow", "three_step", "stem", 0.02e9, 1.0e9, 1e8, 1e5, 0.945),
        ("big", "three_step", "conv5_x", 0.05e9, 0.0, 2e9, 10.0, 0.95),  # does not fit the Pi
        ("cheap", "bottlenet_pp", "conv2_x", 0.01e9, 1.0e9, 1e8, 100.0, 0.80),  # below the threshold
    ]
    cols = ["id", "method", "split", "device_flops", "server_flops", "device_memory_bytes", "bits_actual", "accuracy"]
    out = pd.DataFrame(rows, columns=cols)
    return out.assign(deployed_val_accuracy=out["accuracy"])  # validation as test here: test_decisions.py flips them


def test_best_variant_depends_on_rate():
    slow = best_variant(variants(), PI3, GPU, SLOW, 0.93)
    assert slow["id"] == "deep"  # few bits beat the 1.1 GFLOPs on the Pi
    assert slow["latency"] == pytest.approx(0.6e9 / 24e9 + 500 / 8000 + 0.1e9 / 13.45e12, rel=1e-12)
    fast = best_variant(variants(), "pi3", "rtx2080ti", FAST, 0.93)
    assert fast["id"] == "srv"  # a fast link makes server-only best
    assert fast["latency"] == pytest.approx(2e4 / 1e9 + 1.1e9 / 13.45e12, rel=1e-12)
    # the crossover: 2e4/R + 8.18e-5 = 0.025 + 7.4e-6 + 500/R  ->  R ~ 783 kbit/s
    assert best_variant(variants(), PI3, GPU, 7.7e5, 0.93)["id"] == "deep"
    assert best_variant(variants(), PI3, GPU, 8.0e5, 0.93)["id"] == "srv"


def test_best_variant_constraints():
    t = variants()
    # without a threshold the inaccurate variant wins; the infeasible "big" (3.3 ms) never does
    assert best_variant(t, PI3, GPU, SLOW, None)["id"] == "cheap"
    roomy = custom_device(24e9, "4 GB", name="pi-4gb")
    assert best_variant(t, roomy, GPU, SLOW, 0.93)["id"] == "big"
    assert best_variant(t, PI3, GPU, SLOW, 0.95)["id"] == "srv"  # threshold respected: only 0.95 rows
    assert best_variant(t, PI3, GPU, SLOW, 0.99) is None
    assert best_variant(t, PI3, GPU, SLOW, 0.93, method="original")["id"] == "srv"
    assert best_variant(t, PI3, GPU, SLOW, 0.93, method="bottlenet_pp") is None
    assert best_variant(t, PI3, GPU, SLOW, 0.93, method="nope") is None
    tiny = custom_device(24e9, 1000, name="mcu")  # only server-only (0 bytes on the device) fits
    assert best_variant(t, tiny, GPU, SLOW, 0.93)["id"] == "srv"
    assert best_variant(t.drop(index=0), tiny, GPU, SLOW, 0.93) is None


def test_best_variant_takes_the_callers_latency_table():
    t = variants()
    for rate in (SLOW, FAST):
        latencies = latency_table(t, PI3, GPU, rate)  # the page's own table, passed in: the same answer
        for method in (None, "original", "three_step", "nope"):
            alone = best_variant(t, PI3, GPU, rate, 0.93, method=method)
            given = best_variant(t, PI3, GPU, rate, 0.93, method=method, latencies=latencies)
            if alone is None:
                assert given is None
            else:
                pd.testing.assert_series_equal(given, alone)


def test_best_variant_ties():
    dev = custom_device(1024.0, math.inf)
    t = pd.DataFrame(
        {
            "id": ["z", "y", "x"],
            "method": ["m", "m", "m"],
            "device_flops": [512.0, 0.0, 0.0],
            "server_flops": [0.0, 0.0, 0.0],
            "device_memory_bytes": [1.0, 1.0, 1.0],
            "bits_actual": [0.0, 512.0, 512.0],
            "accuracy": [1.0, 1.0, 1.0],
            "deployed_val_accuracy": [1.0, 1.0, 1.0],
        }
    )
    # all three take exactly 0.5 s; fewer device FLOPs first, then the smaller id
    assert best_variant(t, dev, dev, 1024.0, 0.5)["id"] == "x"
    assert best_variant(t.iloc[:2], dev, dev, 1024.0, 0.5)["id"] == "y"


def test_best_per_method():
    out = best_per_method(variants(), PI3, GPU, SLOW, 0.93)
    assert list(zip(out["method"], out["id"], strict=True)) == [("three_step", "deep"), ("original", "srv")]
    assert out["latency"].is_monotonic_increasing
    out = best_per_method(variants(), PI3, GPU, FAST, 0.93)
    assert dict(zip(out["method"], out["id"], strict=True)) == {"original": "srv", "three_step": "shallow"}
    latencies = latency_table(variants(), PI3, GPU, FAST)  # the page's own table, passed in: the same answer
    pd.testing.assert_frame_equal(best_per_method(variants(), PI3, GPU, FAST, 0.93, latencies=latencies), out)


def test_latency_vs_rate():
    rates = [FAST, "1 kB/s", 1e6, 1e7]  # any order in, sorted out
    out = latency_vs_rate(variants(), PI3, GPU, rates, 0.93)
    assert list(out.columns) == list(RATE_COLUMNS)
    assert out["rate"].tolist() == [SLOW, SLOW, 1e6, 1e6, 1e7, 1e7, FAST, FAST]
    assert out["method"].tolist() == ["original", "three_step"] * 4
    # three_step moves its split shallower as the link gets faster (deep vs shallow cross near 4 Mbit/s)
    assert out["id"].tolist() == ["srv", "deep", "srv", "deep", "srv", "shallow", "srv", "shallow"]
    assert out["split"].tolist()[1::2] == ["conv4_x", "conv4_x", "stem", "stem"]
    for row in out.itertuples():
        best = best_variant(variants(), PI3, GPU, row.rate, 0.93, method=row.method)
        assert row.id == best["id"]
        assert row.latency == pytest.approx(best["latency"], rel=1e-12)
        assert row.latency == pytest.approx(row.t_device + row.t_transmit + row.t_server, rel=1e-12)
        assert row.t_transmit == pytest.approx(row.bits / row.rate, rel=1e-12)
    # with more rate, no method's best latency rises
    for _, g in out.groupby("method"):
        assert g["latency"].is_monotonic_decreasing


def test_overheads_can_change_the_best_variant():
    """A variant with few bits but a slow entropy coder loses to one without coding once coding time counts; the
    curves and the best variant agree at every rate."""
    t = variants()
    t["coding_cpu_seconds"] = np.where(t["id"] == "deep", 5.0, 0.0)  # 5 s of coding against srv's 2.5 s link
    assert best_variant(t, PI3, GPU, SLOW, 0.93)["id"] == "deep"
    counted = best_variant(t, PI3, GPU, SLOW, 0.93, overheads=Overheads(framing_bits=0))
    assert counted["id"] == "srv" and counted["t_coding"] == 0
    assert counted["latency"] == pytest.approx(best_variant(t, PI3, GPU, SLOW, 0.95)["latency"], rel=1e-12)
    out = latency_vs_rate(t, PI3, GPU, [SLOW, 1e6], 0.93, overheads=Overheads(per_image_s=0.01))
    for row in out.itertuples():
        best = best_variant(t, PI3, GPU, row.rate, 0.93, method=row.method, overheads=Overheads(per_image_s=0.01))
        assert row.id == best["id"]
        assert row.latency == pytest.approx(best["latency"], rel=1e-12)


def test_a_propagation_delay_moves_every_latency_not_the_choice():
    """A one-way delay adds the same D to every variant: the best variant at each rate stays, its latency grows by D,
    and the curves agree with the best variant (the delay in their own column)."""
    t, delay = variants(), 0.04
    for rate in (SLOW, 1e6, FAST):
        plain, delayed = best_variant(t, PI3, GPU, rate, 0.93), best_variant(t, PI3, GPU, rate, 0.93, delay_s=delay)
        assert delayed["id"] == plain["id"] and delayed["t_propagation"] == delay
        assert delayed["latency"] == pytest.approx(plain["latency"] + delay, rel=1e-12)
    per = best_per_method(t, PI3, GPU, SLOW, 0.93, delay_s=delay)
    assert per["id"].tolist() == best_per_method(t, PI3, GPU, SLOW, 0.93)["id"].tolist()
    out = latency_vs_rate(t, PI3, GPU, [SLOW, 1e6], 0.93, overheads=Overheads(per_image_s=0.01), delay_s=delay)
    assert list(out.columns) == [*RATE_COLUMNS, "t_propagation"]
    for row in out.itertuples():
        best = best_variant(t, PI3, GPU, row.rate, 0.93, method=row.method, overheads=Overheads(per_image_s=0.01),
                            delay_s=delay)
        assert row.id == best["id"] and row.t_propagation == delay
        assert row.latency == pytest.approx(best["latency"], rel=1e-12)
    assert list(latency_vs_rate(t, PI3, GPU, [SLOW], 0.93).columns) == list(RATE_COLUMNS)  # none: the paper's


def test_empty_results():
    t = variants()
    for empty in (t.iloc[:0], pd.DataFrame()):
        assert best_variant(empty, PI3, GPU, SLOW, 0.93) is None
        assert best_per_method(empty, PI3, GPU, SLOW, 0.93).empty
        out = latency_vs_rate(empty, PI3, GPU, [SLOW, FAST], 0.93)
        assert out.empty and list(out.columns) == list(RATE_COLUMNS)
    tiny = custom_device(24e9, 1, name="mcu")
    assert best_per_method(t.drop(index=0), tiny, GPU, SLOW, 0.93).empty
    assert latency_vs_rate(t.drop(index=0), tiny, GPU, [SLOW], 0.93).empty
    assert latency_vs_rate(t, PI3, GPU, [], 0.93).empty
    with pytest.raises(UserError):
        latency_vs_rate(t, PI3, GPU, [SLOW, "0 kB/s"], 0.93)


def test_accuracy_threshold_default():
    assert accuracy_threshold_default(0.95) == pytest.approx(0.93)  # the paper: ~95 % -> 93 %
    assert accuracy_threshold_default(0.9, drop=0.0) == pytest.approx(0.9)
    assert accuracy_threshold_default(0.01, drop=0.05) == 0.0
    for bad in ((95.0, 0.02), (0.95, -0.01), (0.95, 2.0)):
        with pytest.raises(UserError):
            accuracy_threshold_default(*bad)


def test_an_accuracy_exactly_the_drop_below_a_float32_base_figure_meets_the_threshold():
    """4,287 of 5,000 validation images stored as float32 (0.8574000000953674) against a row's 4,187 as float64: 2.00
    points below, within the allowed drop; one image fewer is not."""
    base = float(np.float32(4287 / 5000))
    t = plane().iloc[:2].assign(deployed_val_accuracy=[4187 / 5000, 4186 / 5000], base_val_accuracy=base)
    assert meets_threshold(t, validation_threshold(t)).tolist() == [True, False]


def test_meets_threshold_reads_validation_and_keeps_out_rows_without_it():
    t = plane().assign(deployed_val_accuracy=[0.8, np.nan, 0.9, 0.84, 0.7, 0.91], accuracy=0.0)
    assert meets_threshold(t, 0.84).tolist() == [False, False, True, True, False, True]  # no figure: re-measure
    assert meets_threshold(t, None).all()  # no threshold (an untrained profile's plane)
    assert not meets_threshold(t.drop(columns="deployed_val_accuracy"), 0.0).any()


def test_compare_table_keeps_only_what_differs():
    t = variants().assign(knobs=[{}, {}, {"s": 0.5}, {"s": 0.5}, {"s": 0.5}, {"bits": 4}])
    out = compare_table(t, ["deep", "shallow", "nope", "deep"])  # unknown ids and repeats are dropped
    assert out.index.tolist() == ["deep", "shallow"]
    # same method and knobs: not shown; split, FLOPs, memory, bits and accuracy differ
    assert "method" not in out and "knobs" not in out
    assert out["split"].tolist() == ["conv4_x", "stem"]
    assert out["Δ device_flops"].tolist() == pytest.approx([0.0, 0.02e9 - 0.6e9])
    assert out["Δ accuracy"].tolist() == pytest.approx([0.0, 0.005])
    assert "Δ split" not in out
    three = compare_table(t, ["srv", "dev", "cheap"], columns=["method", "knobs", "bits_actual"])
    assert list(three.columns) == ["method", "knobs", "bits_actual", "Δ bits_actual"]
    assert three["Δ bits_actual"].tolist() == pytest.approx([0.0, 4.0 - 2e4, 100.0 - 2e4])
    assert compare_table(t, ["deep"]).shape == (1, len(t.columns) - 1)  # one row: nothing to compare against
    assert compare_table(t, []).empty

