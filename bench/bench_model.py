"""Another model on a profile's budget, beside the CIFAR ResNet18: its base model (accuracy and training time), the
paper's Figure 1 for it (the 8-bit feature size at each split against the PNG line), and, from the sweep's rows in
the results store, every method's best variant per split and Figure 4 (as `bench_tradeoff` reports ResNet18's).
With --sweep it first runs `python -m engine sweep` for the model (hours on 2 cores at the quick budget).
Run: python bench/bench_model.py --model mobilenetv2 [--profile quick] [--data PATH] [--sweep] [--workers 1]"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402

from bench.bench_tradeoff import claim_section, latency_section  # noqa: E402
from bench.common import DEFAULT_DATA, profile_data  # noqa: E402
from engine.data import mean_png_bits  # noqa: E402
from engine.models import model_label, split_names  # noqa: E402
from engine.paths import cache_dir  # noqa: E402
from engine.profile import profile_model  # noqa: E402
from engine.profiles import PROFILES  # noqa: E402
from engine.store import ResultsStore  # noqa: E402
from engine.train import load_or_train_base  # noqa: E402


def base_section(model: object, ckpt: dict, base: object) -> str:
    """The base model's accuracy and training cost."""
    m = ckpt["metrics"]
    params = sum(p.numel() for p in model.parameters())
    return (f"{model_label(base.model)} width {base.width:g} ({params / 1e6:.2f} M parameters), base model "
            f"`{base.id}`: {base.epochs} epochs in {m['train_seconds'] / 60:.1f} min on {m.get('device', '?')}, "
            f"validation accuracy {100 * m['val_accuracy']:.2f} %, test accuracy {100 * m['test_accuracy']:.2f} %.")


def figure1_section(model: object, data: object, png_bits: float) -> str:
    """Figure 1: device FLOPs and the 8-bit feature size at each coarse split, against the input's PNG size."""
    rows = profile_model(model, (data.channels, *data.image_size), data.num_classes, split_names(model))
    out = [f"PNG line: {png_bits:,.0f} bits per test image (mean).", "",
           "| split | feature shape | 8-bit feature bits | vs PNG | device MFLOPs | server MFLOPs | device memory kB |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['split']} | {'x'.join(map(str, r['feature_shape']))} | {r['bits_8bit']:,} | "
                   f"{r['bits_8bit'] / png_bits:.2f}x | {r['device_flops'] / 1e6:.2f} | "
                   f"{r['server_flops'] / 1e6:.2f} | {r['device_memory_bytes'] / 1e3:,.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenetv2")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--profile", default="quick", choices=list(PROFILES))
    parser.add_argument("--drop", type=float, default=0.02, help="allowed accuracy drop (fraction, default 0.02)")
    parser.add_argument("--sweep", action="store_true", help="run the profile's sweep for the model first")
    parser.add_argument("--workers", default="1", help="the sweep's local worker processes (default 1)")
    args = parser.parse_args(argv)
    _, data, base = profile_data(args.profile, args.data, args.model)
    if args.sweep:
        subprocess.run([sys.executable, "-m", "engine", "sweep", "--profile", args.profile, "--model", args.model,
                        "--data", args.data, "--workers", args.workers], cwd=PROJECT_ROOT, check=True)
    model, ckpt = load_or_train_base(base, data, cache_dir())
    print(base_section(model, ckpt, base) + "\n")
    print("### Figure 1: feature size at each split\n")
    print(figure1_section(model.eval(), data, mean_png_bits(data, cache_dir())))
    rows = ResultsStore().table()
    rows = rows[rows["base_id"] == base.id] if not rows.empty else rows
    if not rows.empty:
        jscc = rows["knobs"].map(lambda k: isinstance(k, dict) and k.get("encoder") == "jscc")
        rows = rows[~jscc & rows["bits_actual"].notna()].copy()
    if rows.empty:
        print(f"\nNo sweep rows for `{base.id}` yet: run with --sweep, or `python -m engine sweep --profile "
              f"{args.profile} --model {args.model}`.")
        return
    from engine.pareto import validation_threshold

    threshold = validation_threshold(rows, args.drop)
    print("\n### Best variant per split\n")
    print(claim_section(rows, threshold))
    print("\n### Figure 4: latency against link rate\n")
    print(latency_section(rows, threshold))
    print("\nRows: " + ", ".join(f"{m} {n}" for m, n in pd.Series(rows["method"]).value_counts().items()) + ".")


if __name__ == "__main__":
    main()
