import math

import numpy as np
import pandas as pd
import pytest

from engine.errors import UserError
from engine.latency import (
    DEVICES,
    DeviceProfile,
    Overheads,
    awgn_capacity_bps,
    binary_entropy,
    bsc_capacity,
    bsc_channel_bits,
    custom_device,
    jscc_seconds,
    latency_table,
    resolve_device,
    separate_coding_seconds,
)

PI3, GPU = DEVICES.get("pi3"), DEVICES.get("rtx2080ti")


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "method": ["original", "three_step", "three_step"],
            "device_flops": [1e6, 0.0, 2.4e9],
            "server_flops": [13.45e9, 1.345e12, 0.0],
            "device_memory_bytes": [5e8, 0.0, 2e9],
            "bits_actual": [8000.0, 16_000.0, 4.0],
            "bits_ideal": [4000.0, 16_000.0, 3.3],
        }
    )


def test_overheads_are_added_beside_the_papers_terms():
    t = table().assign(coding_cpu_seconds=[0.002, None, 0.0005])
    paper = latency_table(t, PI3, GPU, 8000)
    assert "t_coding" not in paper.columns  # the paper's model, unless overheads are asked for
    out = latency_table(t, PI3, GPU, 8000, overheads=Overheads(per_image_s=0.001, framing_bits=128))
    # row a: + 2 ms coding + 128 / 8000 s framing + 1 ms runtime; row b has no coding figure: 0
    assert out["t_coding"].tolist() == pytest.approx([0.002, 0.0, 0.0005])
    assert out["t_overhead"].tolist() == pytest.approx([0.017] * 3)
    assert (out["latency"] - paper["latency"]).tolist() == pytest.approx([0.019, 0.017, 0.0175])
    assert out[["t_device", "t_transmit", "t_server"]].equals(paper[["t_device", "t_transmit", "t_server"]])
    no_coding = latency_table(t, PI3, GPU, 8000, overheads=Overheads(coding=False, framing_bits=0))
    assert no_coding["latency"].tolist() == pytest.approx(paper["latency"].tolist())
    assert Overheads().framing_bits == 143  # the 8-byte frame and 9-byte feature headers, at most 7 bits of padding
    assert list(latency_table(t.iloc[:0], PI3, GPU, 8000, overheads=Overheads()).columns[-2:]) == \
        ["t_coding", "t_overhead"]
    with pytest.raises(UserError, match=">= 0"):
        Overheads(per_image_s=-1.0)


def test_a_propagation_delay_is_one_term_added_to_every_row():
    """D seconds of one-way propagation delay: the paper's terms unchanged, t_propagation = D, latency + D; none by
    default (the paper's table, no column); it adds after the overheads, which keep their own columns."""
    t = table().assign(coding_cpu_seconds=[0.002, None, 0.0005])
    paper = latency_table(t, PI3, GPU, 8000)
    assert "t_propagation" not in paper.columns
    pd.testing.assert_frame_equal(latency_table(t, PI3, GPU, 8000, delay_s=0.0), paper)
    out = latency_table(t, PI3, GPU, 8000, delay_s=0.025)
    assert out[["t_device", "t_transmit", "t_server", "feasible"]].equals(
        paper[["t_device", "t_transmit", "t_server", "feasible"]])
    assert out["t_propagation"].tolist() == [0.025] * 3
    assert (out["latency"] - paper["latency"]).tolist() == pytest.approx([0.025] * 3)
    # row a by hand: 1e6 / 24e9 s + 1 s + 1 ms + 25 ms
    assert out.loc[0, "latency"] == pytest.approx(1e6 / 24e9 + 1.0 + 1e-3 + 0.025, rel=1e-12)
    both = latency_table(t, PI3, GPU, 8000, overheads=Overheads(per_image_s=0.001, framing_bits=128), delay_s=0.025)
    counted = latency_table(t, PI3, GPU, 8000, overheads=Overheads(per_image_s=0.001, framing_bits=128))
    assert (both["latency"] - counted["latency"]).tolist() == pytest.approx([0.025] * 3)
    empty = latency_table(t.iloc[:0], PI3, GPU, 8000, delay_s=0.025)
    assert empty.empty and "t_propagation" in empty.columns
    for bad in (-0.001, math.inf, math.nan):
        with pytest.raises(UserError, match="propagation delay"):
            latency_table(t, PI3, GPU, 8000, delay_s=bad)


def test_presets_from_the_paper():
    assert set(DEVICES.names()) >= {"pi3", "rtx2080ti"}
    assert (PI3.flops_per_s, PI3.memory_bytes) == (24e9, 1e9)
    assert (GPU.flops_per_s, GPU.memory_bytes) == (13.45e12, 11e9)
    assert PI3.describe() == "Raspberry Pi 3 (24 GFLOP/s, 1 GB)"
    with pytest.raises(UserError, match="pi3"):
        DEVICES.get("pi4")


def test_custom_device():
    dev = custom_device("1 GFLOP/s", "512 MiB", name="phone")
    assert dev == DeviceProfile("phone", 1e9, 512 * 2**20, "phone")
    assert custom_device(5e9).memory_bytes == math.inf
    for bad in ((0, 1e9), (-1e9, 1e9), (1e9, 0), (math.inf, 1e9), ("fast", 1e9)):
        with pytest.raises(UserError):
            custom_device(*bad)


def test_latency_by_hand():
    out = latency_table(table(), "pi3", "rtx2080ti", "1 kB/s")  # 8000 bit/s
    # row a: 1e6 / 24e9 = 41.67 us on the device, 8000 / 8000 = 1 s on the link, 13.45e9 / 13.45e12 = 1 ms
    assert out.loc[0, "t_device"] == pytest.approx(41.6667e-6, rel=1e-5)
    assert out.loc[0, "t_transmit"] == pytest.approx(1.0)
    assert out.loc[0, "t_server"] == pytest.approx(1e-3)
    assert out.loc[0, "latency"] == pytest.approx(1.0 + 1e-3 + 1e6 / 24e9, rel=1e-12)
    # row b: server-only, 2 s of link, 0.1 s on the server
    assert out.loc[1, "latency"] == pytest.approx(2.1)
    # row c: 0.1 s on the device, 0.5 ms of link, but 2 GB does not fit the Pi's 1 GB: infeasible, not slow
    assert out.loc[2, "latency"] == pytest.approx(0.1 + 4 / 8000)
    assert out["feasible"].tolist() == [True, True, False]
    assert out["feasible"].dtype == bool
    assert list(out.columns[-5:]) == ["t_device", "t_transmit", "t_server", "latency", "feasible"]


def test_latency_options():
    t = table()
    before = t.copy()
    ideal = latency_table(t, PI3, GPU, 8000, bits_column="bits_ideal")
    assert ideal.loc[0, "t_transmit"] == pytest.approx(0.5)
    pd.testing.assert_frame_equal(t, before)  # the input is not modified
    big = custom_device(24e9, "4 GB")
    assert latency_table(t, big, GPU, 8000)["feasible"].all()
    free = latency_table(t, PI3, GPU, math.inf)
    assert (free["t_transmit"] == 0).all()
    t.loc[1, "device_memory_bytes"] = np.nan  # unknown memory cannot be shown to fit
    assert not latency_table(t, PI3, GPU, 8000).loc[1, "feasible"]


def test_latency_errors_and_empty():
    for bad in (0, -1, "0 kB/s", "quick"):
        with pytest.raises(UserError):
            latency_table(table(), PI3, GPU, bad)
    with pytest.raises(UserError, match="bits_8bit"):
        latency_table(table(), PI3, GPU, 8000, bits_column="bits_8bit")
    with pytest.raises(UserError, match="device_memory_bytes"):
        latency_table(table().drop(columns="device_memory_bytes"), PI3, GPU, 8000)
    empty = latency_table(table().iloc[:0], PI3, GPU, 8000)
    assert empty.empty and {"latency", "feasible"} <= set(empty.columns)
    assert latency_table(pd.DataFrame(), PI3, GPU, 8000).empty


def test_awgn():
    assert awgn_capacity_bps(1e6, 0.0) == pytest.approx(1e6)  # log2(1 + 1) = 1 bit per channel use
    assert awgn_capacity_bps(1e6, 10 * math.log10(3)) == pytest.approx(2e6)
    assert awgn_capacity_bps(2e6, 20.0) == pytest.approx(2e6 * math.log2(101))
    np.testing.assert_allclose(awgn_capacity_bps(1e6, np.array([0.0, 10 * math.log10(15)])), [1e6, 4e6])
    assert separate_coding_seconds(1e6, 1e6, 0.0) == pytest.approx(1.0)
    assert separate_coding_seconds(1e6, 1e6, 10 * math.log10(15)) == pytest.approx(0.25)
    assert jscc_seconds(512, 1e6) == pytest.approx(512e-6)
    assert isinstance(jscc_seconds(512, 1e6), float)
    with pytest.raises(UserError):
        awgn_capacity_bps(0, 10.0)
    with pytest.raises(UserError):
        jscc_seconds(10, -1e6)


def test_bsc():
    assert binary_entropy(0.5) == 1.0
    assert binary_entropy(0.0) == 0.0 and binary_entropy(1.0) == 0.0
    assert binary_entropy(0.25) == pytest.approx(0.8112781244591328)
    assert binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-3)
    assert bsc_capacity(0.11) == pytest.approx(0.5, abs=1e-3)
    assert bsc_capacity(0.0) == 1.0 and bsc_capacity(0.5) == 0.0
    assert bsc_channel_bits(1000, 0.11) == pytest.approx(2000, rel=1e-3)
    assert bsc_channel_bits(1000, 0.0) == 1000
    assert bsc_channel_bits(1000, 0.5) == math.inf
    assert bsc_channel_bits(0, 0.5) == 0
    np.testing.assert_allclose(bsc_channel_bits(np.array([100.0, 100.0, 100.0]), np.array([0.0, 0.25, 0.5])),
                               [100.0, 100.0 / (1 - 0.8112781244591328), np.inf])
    for bad in (-0.1, 1.5, np.nan):
        with pytest.raises(UserError):
            bsc_capacity(bad)


def test_a_device_of_one_s_own_is_typed_as_speed_and_memory() -> None:
    dev = resolve_device("10GFLOP/s,512MB")
    assert (dev.flops_per_s, dev.memory_bytes, dev.name) == (10e9, 512e6, "custom")
    assert resolve_device("2.5 TFLOP/s").memory_bytes == math.inf  # memory unbounded when left out
    assert resolve_device("pi3") == DEVICES.get("pi3")
    with pytest.raises(UserError, match="unknown device 'pi4'"):
        resolve_device("pi4")
    with pytest.raises(UserError, match="cannot read the memory size 'lots'"):
        resolve_device("10GFLOP/s,lots")
