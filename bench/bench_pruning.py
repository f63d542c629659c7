"""Pruning at one split (default conv4_x): for the unpruned base (`original`), each `three_step` snapshot level and
each `two_step_pruning` step-1 level, the device FLOPs, device memory and measured CPU latency of the device part
before (masked, full size) and after physical removal of the pruned channels, with the bits per image (8-bit +
Huffman, the real bitstream) and the test and validation accuracy. Pruning runs are cached like any variant's.
Run: python bench/bench_pruning.py [--profile smoke|quick] [--split conv4_x] [--data PATH] [--threads N]
                                   [--methods three_step two_step_pruning] [--set three_step.iteration_steps=8 ...]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import DEFAULT_DATA, profile_data  # noqa: E402
from engine.config import VariantConfig  # noqa: E402
from engine.methods import METHODS, RunContext, three_step, two_step_pruning  # noqa: E402
from engine.models import split  # noqa: E402
from engine.paths import cache_dir  # noqa: E402
from engine.profile import count_flops, device_seconds, param_bytes, peak_activation_bytes  # noqa: E402
from engine.profiles import PROFILES  # noqa: E402

PRUNERS = {"three_step": three_step.pruned_split, "two_step_pruning": two_step_pruning.pruned_split}


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """`method.knob=value` pairs (values as JSON where they parse, lists as tuples) grouped by method."""
    out: dict[str, dict[str, Any]] = {m: {} for m in PRUNERS}
    for item in items:
        key, _, text = item.partition("=")
        method, _, knob = key.partition(".")
        if method not in out or not knob or not text:
            raise SystemExit(f"--set wants METHOD.KNOB=VALUE with METHOD one of {', '.join(PRUNERS)}; got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[method][knob] = tuple(value) if isinstance(value, list) else value
    return out


def latencies(modules: list[nn.Module], x: torch.Tensor, rounds: int = 3, repeats: int = 31) -> list[float]:
    """Median batch-1 CPU seconds of each module, measured in alternating rounds so drift hits all alike."""
    runs: list[list[float]] = [[] for _ in modules]
    for _ in range(rounds):
        for i, m in enumerate(modules):
            runs[i].append(device_seconds(m.eval(), x, repeats=repeats))
    return [statistics.median(r) for r in runs]


def footprint(device: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    return count_flops(device.eval(), x), param_bytes(device) + peak_activation_bytes(device, x)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--profile", default="smoke", choices=list(PROFILES))
    parser.add_argument("--split", default="conv4_x")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--methods", nargs="+", default=list(PRUNERS), choices=list(PRUNERS))
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.KNOB=VALUE",
                        help="override a knob of the profile's grid, e.g. three_step.iteration_steps=8")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    profile, data, base = profile_data(args.profile, args.data)

    def progress(fraction: float, message: str) -> None:
        print(f"\r{100 * fraction:5.1f}% {message[:100]:<100}", end="", file=sys.stderr, flush=True)

    ctx = RunContext(data, profile, cache_dir(), progress=progress)
    x = torch.zeros(1, data.channels, *data.image_size)
    start = time.perf_counter()
    ref = METHODS.get("original").run(VariantConfig.make("original", args.split, base, bits=8), ctx)
    base_model, ckpt = ctx.base(base)
    base_device = split(base_model, args.split)[0]
    table = [("base (original)", "-", 0.0, footprint(base_device, x), footprint(base_device, x),
              latencies([base_device], x) * 2, ref, ckpt["metrics"]["val_accuracy"], 0.0)]
    for name in args.methods:
        method, pruned_split = METHODS.get(name), PRUNERS[name]
        for v in method.variants(base, [args.split]):
            cfg = VariantConfig.make(name, v.split, base, **{**dict(v.knobs), **overrides[name]})
            row = method.run(cfg, ctx)
            pruned = pruned_split(cfg, ctx)
            masked = split(pruned.masked_model.eval(), args.split)[0]
            setting = f"level {row['level']}" if name == "three_step" else f"step1 {row['step1_sparsity']:g}"
            setting += f" (output {cfg.knob('output'):g})" if cfg.knob("output") is not None else ""
            setting += " (threshold pick)" if row.get("threshold_pick") else ""
            table.append((name, setting, row["sparsity"], footprint(masked, x), footprint(pruned.device, x),
                          latencies([masked, pruned.device], x), row, row["val_accuracy"], row["prune_seconds"]))
    print(file=sys.stderr)
    print(f"Split {args.split}, profile {args.profile} (width {base.width:g}, {len(data.train_y):,} training images, "
          f"{base.val_fraction:.0%} of them held out for validation, {len(data.test_y):,} test images), "
          f"{torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f}; "
          f"{time.perf_counter() - start:.0f} s in all.\n")
    print("| method | setting | channel sparsity | device MFLOPs masked -> removed | device memory kB masked -> "
          "removed | device CPU ms masked -> removed | feature | bits/image (ideal) | test acc | val acc | "
          "prune s |")
    print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for name, setting, sparsity, (f0, m0), (f1, m1), (t0, t1), row, val, secs in table:
        feature = "x".join(str(d) for d in row["feature_shape"])
        print(f"| {name} | {setting} | {sparsity:.3f} | {f0 / 1e6:.2f} -> {f1 / 1e6:.2f} | {m0 / 1e3:.0f} -> "
              f"{m1 / 1e3:.0f} | {1e3 * t0:.2f} -> {1e3 * t1:.2f} | {feature} | {row['bits_actual']:,.0f} "
              f"({row['bits_ideal']:,.0f}) | {row['accuracy']:.4f} | {val:.4f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
