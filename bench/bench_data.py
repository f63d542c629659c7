"""Times loading a dataset (default: the CIFAR-10 JPEG archive in ../shared/data): the first load, which decodes
into a fresh temporary cache, and the cached load (best of --repeat). Prints a markdown table row.
Run: python bench/bench_data.py [--data PATH] [--repeat N]."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from engine.data import load_data  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="dataset path (default: ../shared/data/cifar10-jpeg.tar.gz from the project root)")
    parser.add_argument("--repeat", type=int, default=3, help="cached loads to time; the best is reported")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    with tempfile.TemporaryDirectory(prefix="coinfer-bench-") as tmp:
        start = time.perf_counter()
        data = load_data(args.data, cache_dir=Path(tmp))
        first = time.perf_counter() - start
        cached = []
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            load_data(args.data, cache_dir=Path(tmp))
            cached.append(time.perf_counter() - start)

    images = len(data.train_y) + len(data.test_y)
    shape = f"{data.channels}x{data.image_size[0]}x{data.image_size[1]}"
    print(f"first load {first:.2f} s ({images / first:,.0f} images/s); cached load best {min(cached):.3f} s, "
          f"all {', '.join(f'{t:.3f}' for t in cached)} s")
    print()
    print("| dataset | images | shape | CPU cores | first load (decode + cache) | cached load |")
    print("|---|---:|---|---:|---:|---:|")
    print(f"| {Path(args.data).name} | {images:,} | {shape} | {cores} | {first:.1f} s | {min(cached):.2f} s |")


if __name__ == "__main__":
    main()
