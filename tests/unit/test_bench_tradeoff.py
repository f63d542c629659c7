"""bench/bench_tradeoff.py's goal lines read the device's memory figure that Fig. 4 uses, so that a device part too
large for the Pi 3 as a measured process is not reported as its fastest variant."""

from __future__ import annotations

import dataclasses

import pandas as pd

from bench.bench_tradeoff import PI3, goals_section


def _rows() -> pd.DataFrame:
    """A pruned and coded `three_step` row beside the `original` one at conv4_x, both above the threshold; the
    `three_step` device process measured at 1.2 GB under TorchScript, more than the Pi 3's 1 GB."""
    common = {"split": "conv4_x", "server_flops": 1e8, "base_val_accuracy": 0.87, "sparsity": 0.0}
    return pd.DataFrame([
        {**common, "id": "a", "method": "three_step", "knobs": {"encoder": "none", "bits": 4}, "level": 1,
         "device_flops": 4e8, "flops_reduction": 2.0, "bits_actual": 50.0, "bits_ideal": 48.0, "accuracy": 0.86,
         "deployed_val_accuracy": 0.86, "device_memory_bytes": 5e7, "device_rss_torchscript_bytes": 1.2e9},
        {**common, "id": "b", "method": "original", "knobs": {"bits": 8}, "level": float("nan"),
         "device_flops": 8e8, "flops_reduction": 1.0, "bits_actual": 40_000.0, "bits_ideal": 39_000.0,
         "accuracy": 0.87, "deployed_val_accuracy": 0.87, "device_memory_bytes": 6e7,
         "device_rss_torchscript_bytes": 3e8},
    ])


def test_the_goal_lines_count_the_model_s_memory_by_default() -> None:
    text = goals_section(_rows(), 0.85)
    assert "- 10 kB/s: `three_step`" in text and "(original," in text


def test_with_the_measured_process_an_oversized_device_part_has_no_latency_line() -> None:
    text = goals_section(_rows(), 0.85, device=dataclasses.replace(PI3, memory_figure="torchscript"))
    assert "kB/s: `three_step`" not in text
    assert "fewest bits: **50.0 bits**" in text  # the rows themselves are still reported
