"""Device memory as deployed: at every split of the ResNet18 (width 1.0 by default, the paper's model), the peak
resident memory of a process that loads the device part and runs one image, under TorchScript and under
onnxruntime (`engine.deploy.footprint`), unpruned (8-bit, `original`) and pruned (`three_step`'s last snapshot,
8-bit), beside the profile's figure (parameters + largest activations) and against the Raspberry Pi 3's 1 GB. It
checks Shao & Zhang (2020): "PyTorch needed over 0.9 GB for ResNet18 on the Pi 3", so that only about 40 % of the
uncompressed and 90 % of the compressed model could be deployed. Memory depends on the architecture, not on how
well it was trained, so the smoke budget's weights (a minute of training) stand for a trained model's; the pruned
snapshots keep the channels the profile's schedule keeps.
Run: python bench/bench_footprint.py [--profile smoke] [--width 1.0] [--data PATH] [--threads 1]"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402

from bench.common import DEFAULT_DATA  # noqa: E402
from engine.config import VariantConfig  # noqa: E402
from engine.data import load_data, subset  # noqa: E402
from engine.deploy.export import write_bundle  # noqa: E402
from engine.deploy.footprint import RUNTIMES, Footprint, measure_footprint  # noqa: E402
from engine.latency import DEVICES  # noqa: E402
from engine.methods import METHODS, RunContext  # noqa: E402
from engine.models import END_POINTS, split_names  # noqa: E402
from engine.paths import cache_dir  # noqa: E402
from engine.profiles import PROFILES  # noqa: E402
from engine.units import format_bytes, format_flops  # noqa: E402


def variants(ctx: RunContext, width: float) -> list[tuple[str, VariantConfig]]:
    """Every split unpruned (8-bit), and every inner split pruned to the schedule's last level (8-bit)."""
    base = ctx.profile.base_config(ctx.data.fingerprint, width=width)
    splits = split_names(base.model, coarse_only=True)
    out = [("unpruned", VariantConfig.make("original", s, base, bits=8)) for s in splits]
    last = ctx.profile.prune.levels - 1
    out += [("pruned", VariantConfig.make("three_step", s, base, **ctx.profile.prune.knobs(), snapshot=last,
                                          encoder="none", bits=8)) for s in splits if s not in END_POINTS]
    return out


def measure(ctx: RunContext, cfg: VariantConfig, threads: int) -> tuple[dict, list[Footprint]]:
    """The variant's row (run in memory) and its bundle's footprint under each runtime."""
    row = METHODS.get(cfg.method).run(cfg, ctx)
    path = write_bundle(cfg, ctx, cache_dir() / "bundles" / cfg.id, metrics=row)
    return row, [measure_footprint(path, r, threads) for r in RUNTIMES]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="smoke")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--threads", type=int, default=1, help="the runtime's threads in each measured process")
    args = p.parse_args(argv)
    profile = PROFILES.get(args.profile)
    data = subset(load_data(args.data), profile.train_limit, profile.test_limit, seed=0)
    ctx = RunContext(data, profile, cache_dir())
    pi3 = DEVICES.get("pi3").memory_bytes
    print(f"ResNet18 width {args.width:g}, `{args.profile}` weights; one image of {list(data.test_x.shape[1:])}; "
          f"{args.threads} runtime thread(s); torch {torch.__version__}, {platform.machine()}.\n")
    print("| split | kind | device FLOPs | profile's figure (params + activations) | TorchScript process | "
          "ONNX Runtime process | fits 1 GB (TorchScript / ONNX) |")
    print("|---|---|---:|---:|---:|---:|:-:|")
    fits: dict[tuple[str, str], list[bool]] = {}
    runtime_only: dict[str, int] = {}
    for kind, cfg in variants(ctx, args.width):
        row, found = measure(ctx, cfg, args.threads)
        by = {f.runtime: f for f in found}
        for f in found:
            runtime_only[f.runtime] = max(runtime_only.get(f.runtime, 0), f.runtime_only)
            if cfg.split != "server_only":
                fits.setdefault((kind, f.runtime), []).append(f.peak <= pi3)
        ok = " / ".join("yes" if by[r].peak <= pi3 else "no" for r in RUNTIMES)
        print(f"| {cfg.split} | {kind} | {format_flops(row['device_flops'])} | "
              f"{format_bytes(row['device_memory_bytes'])} | {format_bytes(by['torchscript'].peak)} | "
              f"{format_bytes(by['onnx'].peak)} | {ok} |")
    print("\nThe runtime alone (imported, nothing loaded): " + ", ".join(
        f"{r} {format_bytes(b)}" for r, b in runtime_only.items()) + ".")
    print("Share of the device parts (the device-only end point and every inner split) that fit the Pi 3's 1 GB: "
          + "; ".join(f"{kind} under {r}: {sum(v)} of {len(v)}" for (kind, r), v in fits.items()) + ".")


if __name__ == "__main__":
    main()
