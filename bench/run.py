"""Runs every benchmark and rewrites BENCHMARKS.md with the machine, the commands and their output.
Run: make bench  (or python bench/run.py [--data PATH] [--skip-quick])."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from engine.config import PROFILES  # noqa: E402
from engine.data import load_data, mean_png_bits  # noqa: E402
from engine.store import ResultsStore  # noqa: E402
from engine.train import base_checkpoint_path, load_checkpoint  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = len(os.sched_getaffinity(0))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}, {cores} cores, {mem:.0f} GiB RAM, GPU: {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")


def run(argv: list[str]) -> str:
    out = subprocess.run([sys.executable, *argv], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def quick_original_section(data_path: str) -> str:
    """The quick profile's base model and the `original` method at each split, from the results store."""
    run(["-m", "engine", "run", "original", "--profile", "quick", "--data", data_path])
    data = load_data(data_path)
    base = PROFILES.get("quick").base_config(data.fingerprint)
    metrics = load_checkpoint(base_checkpoint_path(base, Path(os.environ.get("COINFER_CACHE", PROJECT_ROOT / "cache"))))
    table = ResultsStore().table(method="original")
    table = table[table["base_id"] == base.id].sort_values("device_flops", kind="stable")
    png = mean_png_bits(data)
    show = pd.DataFrame({
        "split": table["split"],
        "accuracy": table["accuracy"].map(lambda a: f"{a:.2%}"),
        "device MFLOPs": (table["device_flops"] / 1e6).map(lambda v: f"{v:,.2f}"),
        "device memory kB": (table["device_memory_bytes"] / 1e3).map(lambda v: f"{v:,.1f}"),
        "bits actual": table["bits_actual"].map(lambda v: f"{v:,.0f}"),
        "bits ideal": table["bits_ideal"].map(lambda v: f"{v:,.1f}"),
        "bits raw (8-bit)": table["bits_raw"].map(lambda v: f"{v:,.0f}"),
        "vs PNG input": (table["bits_actual"] / png).map(lambda v: f"{v:.2f}x"),
    })
    m = metrics["metrics"] if metrics else {}
    lines = [
        f"Base model `{base.id}`: ResNet18 width {base.width:g}, {base.epochs} epochs, batch {base.batch_size}, "
        f"one-cycle SGD peak lr {base.lr:g}, seed {base.seed}, {m.get('train_images', 0):,} training images "
        f"(10 % held out for validation). Trained in **{m.get('train_seconds', float('nan')) / 60:.1f} min** on "
        f"{m.get('device')}; test accuracy **{m.get('test_accuracy', float('nan')):.2%}** on all "
        f"{len(data.test_y):,} test images (validation {m.get('val_accuracy', float('nan')):.2%}).",
        "",
        f"`original` at each split (8-bit uniform quantisation, Huffman code fitted on 2,000 training images; bits "
        f"are the mean length of the real per-image bitstreams over the test set). PNG input line: {png:,.0f} bits.",
        "",
        show.to_markdown(index=False),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--skip-quick", action="store_true", help="skip the quick-profile training and evaluation")
    args = parser.parse_args()
    sections = [
        ("Data load", ["bench/bench_data.py", "--data", args.data]),
        ("Training throughput", ["bench/bench_train.py", "--data", args.data]),
        ("Huffman encoder", ["-m", "bench.bench_codecs"]),
    ]
    parts = ["# Benchmarks", "", f"Machine: {machine()}.", "",
             "Every figure below is printed by the command above it; `make bench` reruns them all and rewrites "
             "this file.", ""]
    for title, argv in sections:
        print(f"running {title}…", file=sys.stderr)
        parts += [f"## {title}", "", f"`python {' '.join(argv).replace(args.data, 'DATA')}`", "", run(argv), ""]
    if not args.skip_quick:
        print("running the quick profile…", file=sys.stderr)
        parts += ["## Quick profile: base model and the `original` method", "",
                  "`python -m engine run original --profile quick --data DATA`", "",
                  quick_original_section(args.data), ""]
    parts.append("DATA = `../shared/data/cifar10-jpeg.tar.gz` (CIFAR-10 as JPEG, a lossy copy).")
    (PROJECT_ROOT / "BENCHMARKS.md").write_text("\n".join(parts) + "\n")
    print("wrote BENCHMARKS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
