"""Command line: `python -m engine {data,profile,train-base,run,results} ...`. Every long step shows progress;
a user mistake prints one line and exits with status 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from engine.background import PROGRESS_ENV, ProgressFile
from engine.config import PROFILES
from engine.errors import UserError
from engine.paths import cache_dir

log = logging.getLogger("engine")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset: CIFAR-10 root, ImageFolder dir with train/ and test/, or a .tar/.tar.gz "
                                  "of one (default: $COINFER_DATA, then cache/data/, then torchvision's download)")
    p.add_argument("--profile", default="quick", help="budget: smoke, quick (CPU default) or paper (GPU)")
    p.add_argument("--width", type=_positive_float, help="width multiplier (default: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="seed of training, splits and subsets (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="locate, decode and cache the dataset; print a summary")
    _common(p)
    p = sub.add_parser("profile", help="FLOPs, memory and feature size at each split (no training needed)")
    _common(p)
    p.add_argument("--all-splits", action="store_true", help="include every BasicBlock boundary")
    p = sub.add_parser("train-base", help="train (or load from the cache) the base model")
    _common(p)
    p = sub.add_parser("run", help="build and measure a method's variants; rows go to the results store")
    _common(p)
    p.add_argument("method", help="method name, e.g. original")
    p.add_argument("--split", action="append", help="split point (repeatable; default: the paper's split points)")
    p = sub.add_parser("results", help="print the results table")
    p.add_argument("--method", help="only this method")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    fmt.add_argument("--json", action="store_true", help="JSON records on stdout")
    return parser


def _writable_cache() -> Path:
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / f".write-probe-{time.time_ns()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cache directory {cache} is not writable ({exc.strerror}): "
                        "set COINFER_CACHE to a writable directory") from None
    return cache


class _Bar:
    """A tqdm bar driven by (fraction, message) progress callbacks."""

    def __init__(self, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, desc=desc, unit="‰", file=sys.stderr, leave=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
        status_file = os.environ.get(PROGRESS_ENV)
        self.status = ProgressFile(Path(status_file)) if status_file else None

    def __call__(self, fraction: float, message: str) -> None:
        self.bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        self.bar.set_postfix_str(message, refresh=True)
        if self.status:
            self.status(fraction, message)

    def close(self) -> None:
        self.bar.close()


def _load(args: argparse.Namespace):  # noqa: ANN202
    from engine.data import load_data, subset

    profile = PROFILES.get(args.profile)
    data = load_data(args.data, cache_dir=_writable_cache())
    if profile.train_limit or profile.test_limit:
        data = subset(data, profile.train_limit, profile.test_limit, seed=args.seed)
    base = profile.base_config(data.fingerprint, width=args.width, seed=args.seed)
    return profile, data, base


def cmd_data(args: argparse.Namespace) -> int:
    from engine.data import mean_png_bits

    start = time.perf_counter()
    _, data, _ = _load(args)
    seconds = time.perf_counter() - start
    print(f"dataset      {data.name} ({data.source})")
    print(f"fingerprint  {data.fingerprint}")
    print(f"train/test   {len(data.train_y)} / {len(data.test_y)} images, {data.channels}x"
          f"{data.image_size[0]}x{data.image_size[1]}, {data.num_classes} classes")
    print(f"classes      {' '.join(data.classes)}")
    print(f"PNG input    {mean_png_bits(data, _writable_cache()):.0f} bits per test image (mean)")
    print(f"loaded in    {seconds:.2f} s")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from engine.models import split_names
    from engine.profile import profile_model
    from engine.train import make_model

    _, data, base = _load(args)
    model = make_model(base, data)
    rows = profile_model(model, (data.channels, *data.image_size), data.num_classes,
                         split_names(coarse_only=not args.all_splits))
    table = pd.DataFrame(rows)[["split", "device_flops", "server_flops", "device_memory_bytes", "feature_shape",
                                "bits_fp32", "bits_8bit"]]
    table["device_MFLOPs"] = table.pop("device_flops") / 1e6
    table["server_MFLOPs"] = table.pop("server_flops") / 1e6
    table["device_memory_kB"] = table.pop("device_memory_bytes") / 1e3
    print(f"width {base.width}, input {data.channels}x{data.image_size[0]}x{data.image_size[1]}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


def cmd_train_base(args: argparse.Namespace) -> int:
    from engine.train import load_or_train_base

    profile, data, base = _load(args)
    bar = _Bar(f"base {base.id}")
    try:
        _, ckpt = load_or_train_base(base, data, _writable_cache(), bar)
    finally:
        bar.close()
    m = ckpt["metrics"]
    print(f"base model {base.id}: width {base.width}, {base.epochs} epochs, test accuracy {m['test_accuracy']:.4f}, "
          f"validation {m['val_accuracy']:.4f}, trained in {m['train_seconds']:.0f} s on {m['device']}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from engine.methods import METHODS, RunContext
    from engine.models import SPLIT_POINTS, split_names
    from engine.store import ResultsStore

    method = METHODS.get(args.method)
    splits = args.split or split_names(coarse_only=True)
    for s in splits:
        SPLIT_POINTS.get(s)
    profile, data, base = _load(args)
    cache = _writable_cache()
    store = ResultsStore()
    bar = _Bar(args.method)
    ctx = RunContext(data, profile, cache, progress=bar)
    rows = []
    try:
        variants = method.variants(base, splits)
        for i, variant in enumerate(variants):
            bar(i / len(variants), f"{variant.split}")
            row = method.run(variant, ctx)
            store.put(row)
            rows.append(row)
        bar(1.0, "done")
    finally:
        bar.close()
    table = pd.DataFrame(rows)[["id", "split", "accuracy", "device_flops", "bits_actual", "bits_ideal"]]
    print(table.to_string(index=False))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from engine.store import ResultsStore

    store = ResultsStore()
    table = store.table(method=args.method)
    if args.csv:
        table.to_csv(sys.stdout, index=False)
    elif args.json:
        json.dump(json.loads(table.to_json(orient="records")), sys.stdout, indent=1)
        print()
    elif table.empty:
        print("no results yet: run `python -m engine run original` or start a job from the dashboard")
    else:
        cols = [c for c in ("id", "method", "split", "width", "accuracy", "device_flops", "bits_actual", "bits_ideal",
                            "created_at") if c in table]
        print(table[cols].to_string(index=False))
    return 0


COMMANDS = {"data": cmd_data, "profile": cmd_profile, "train-base": cmd_train_base, "run": cmd_run,
            "results": cmd_results}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    code, error = 1, None
    try:
        code = COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code, error = exc.exit_code, str(exc)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        code, error = 130, "interrupted"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if os.environ.get(PROGRESS_ENV):
            ProgressFile(Path(os.environ[PROGRESS_ENV])).finish(code, error)
    return code


if __name__ == "__main__":
    sys.exit(main())
