"""Commands that prepare a base model: `data` (locate, decode and cache the dataset), `profile` (cost of each split,
no training) and `train-base` (train or load the base model)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import sys
import time

import pandas as pd

from engine.cli.common import Bar, add_common, chosen_splits, load, number_type, writable_cache
from engine.config import MAX_EPOCHS, MAX_INPUT_SIZE
from engine.errors import UserError


def sizes(text: str) -> tuple[int, ...]:
    """An argparse type: "16x6,24x4,32x3" (size x epochs) or "16,16,24,32" (one size per epoch).

    Args:
        text: the option's value as typed.

    Returns:
        One input size per epoch.
    """
    out: list[int] = []
    for part in text.split(","):
        size, cross, times = part.strip().partition("x")
        try:
            stage = (int(size), int(times) if cross else 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not sizes: {text!r}; e.g. 16x6,24x4,32x3 (size x epochs)") from None
        if min(stage) < 1:
            raise argparse.ArgumentTypeError(f"sizes and epochs must be positive: {part.strip()!r} in {text!r}")
        if stage[0] > MAX_INPUT_SIZE or len(out) + stage[1] > MAX_EPOCHS:
            raise argparse.ArgumentTypeError(f"at most {MAX_EPOCHS} epochs of sizes up to {MAX_INPUT_SIZE} pixels: "
                                             f"{part.strip()!r} in {text!r}")
        out += [stage[0]] * stage[1]
    return tuple(out)


def runs(values: tuple[float, ...]) -> str:
    """A per-epoch schedule as VALUExEPOCHS runs, the form `--sizes` takes.

    Args:
        values: one value per epoch.

    Returns:
        The runs, e.g. "16x6,24x4,32x3".
    """
    return ",".join(f"{v:g}x{len(list(run))}" for v, run in itertools.groupby(values))


def decay(text: str) -> float:
    """A moving average's decay, the form `--ema` takes: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"not a decay: {text!r}; give a number from 0 to below 1, e.g. 0.999")
    return value


MAX_BATCH = 1 << 16  # images per training step: more than a CPU or a GPU holds at any width here
epochs_int = number_type(int, lambda v: 1 <= v <= MAX_EPOCHS, f"from 1 to {MAX_EPOCHS}")
batch_int = number_type(int, lambda v: 1 <= v <= MAX_BATCH, f"from 1 to {MAX_BATCH}")
rate_float = number_type(float, lambda v: math.isfinite(v) and 0 < v <= 10, "a number > 0 and at most 10")
share_float = number_type(float, lambda v: 0 <= v < 1, "a number from 0 to below 1")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data`, `profile` and `train-base` commands.

    Args:
        subparsers: the command line's subcommands.
    """
    p = subparsers.add_parser("data", help="locate, decode and cache the dataset; print a summary")
    add_common(p)
    p = subparsers.add_parser("profile", help="FLOPs, memory and feature size at each split (no training needed)")
    add_common(p)
    p.add_argument("--all-splits", action="store_true",
                   help="every valid split point: the model's finer named points and, for a traced model, every node "
                        "of its graph where one tensor crosses")
    p.add_argument("--json", action="store_true", help="JSON records on stdout (FLOPs, bytes and bits unscaled)")
    p = subparsers.add_parser("train-base", help="train (or load from the cache) the base model")
    add_common(p)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--sizes", type=sizes, help="progressive resizing: the input size of each epoch as "
                                                   "SIZExEPOCHS parts, e.g. 16x6,24x4,32x3 (13 epochs; replaces the "
                                                   "profile's count)")
    p.add_argument("--ema", type=decay, metavar="DECAY",
                   help="weight averaging: keep an exponential moving average of the weights with this decay (e.g. "
                        "0.999) and use it where it scores higher on validation")
    # the recipe's other knobs, for trying a recipe on validation accuracy before a profile adopts it
    length.add_argument("--epochs", type=epochs_int, help="epochs at the data's size (default: the profile's)")
    p.add_argument("--batch-size", type=batch_int, help="training batch (default: the profile's)")
    p.add_argument("--lr", type=rate_float, help="peak learning rate of the one-cycle schedule (default: the "
                                                 "profile's)")
    p.add_argument("--weight-decay", type=share_float, metavar="WD", help="SGD weight decay (default 5e-4)")
    p.add_argument("--label-smoothing", type=share_float, metavar="EPS",
                   help="label smoothing of the cross-entropy (default 0.1)")


def _cmd_data(args: argparse.Namespace) -> int:
    """Print a summary of the dataset, decoding and caching it on the way."""
    from engine.data import mean_png_bits

    start = time.perf_counter()
    _, data, _ = load(args)
    seconds = time.perf_counter() - start
    print(f"dataset      {data.name} ({data.source})")
    print(f"fingerprint  {data.fingerprint}")
    print(f"train/test   {len(data.train_y)} / {len(data.test_y)} images, {data.channels}x"
          f"{data.image_size[0]}x{data.image_size[1]}, {data.num_classes} classes")
    print(f"classes      {' '.join(data.classes)}")
    print(f"PNG input    {mean_png_bits(data, writable_cache()):.0f} bits per test image (mean)")
    print(f"loaded in    {seconds:.2f} s")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    """Print the FLOPs, memory and feature size of the untrained base model at each split."""
    from engine.models import all_split_points, split_names
    from engine.profile import profile_model
    from engine.train import make_model

    _, data, base = load(args)
    model = make_model(base, data)
    names = chosen_splits(args, base)
    if names is not None:
        names = ["server_only", *(n for n in names if n not in ("server_only", "device_only")), "device_only"]
    else:
        names = all_split_points(model) if args.all_splits else split_names(model)
    rows = profile_model(model, (data.channels, *data.image_size), data.num_classes, names)
    table = pd.DataFrame(rows)[["split", "device_flops", "server_flops", "device_memory_bytes", "feature_shape",
                                "bits_fp32", "bits_8bit"]]
    if args.json:
        from engine.store import frame_to_json

        frame_to_json(table.assign(width=base.width), sys.stdout, indent=1)
        print()
        return 0
    table["device_MFLOPs"] = table.pop("device_flops") / 1e6
    table["server_MFLOPs"] = table.pop("server_flops") / 1e6
    table["device_memory_kB"] = table.pop("device_memory_bytes") / 1e3
    print(f"{base.model}, width {base.width}, input {data.channels}x{data.image_size[0]}x{data.image_size[1]}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


def _cmd_train_base(args: argparse.Namespace) -> int:
    """Train (or load from the cache) the base model and print its accuracy and training cost."""
    from engine.profiles import PROFILES
    from engine.provenance import describe_environments
    from engine.train import load_or_train_base

    profile = PROFILES.get(args.profile) if args.profile in PROFILES else None  # load() says what an unknown one is
    if args.epochs is not None and profile is not None and profile.scales:
        raise UserError(f"--epochs: the {profile.name} profile resizes its {profile.epochs} epochs one by one; give "
                        "the schedule with --sizes instead, e.g. --sizes 16x8,24x8,32x8")
    _, data, base = load(args)
    if args.sizes:
        base = dataclasses.replace(base, epochs=len(args.sizes), sizes=args.sizes, scales=())
    recipe = {"epochs": args.epochs, "ema": args.ema, "batch_size": args.batch_size, "lr": args.lr,
              "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing}
    base = dataclasses.replace(base, **{k: v for k, v in recipe.items() if v is not None})
    bar = Bar(f"base {base.id}")
    try:
        _, ckpt = load_or_train_base(base, data, writable_cache(), bar)
    finally:
        bar.close()
    m = ckpt["metrics"]
    where = describe_environments([m["trained_on"]]) if "trained_on" in m else m["device"]
    schedule = ("sizes", base.sizes) if base.sizes else ("scales", base.scales) if base.scales else None
    schedule_text = f" ({schedule[0]} {runs(schedule[1])})" if schedule else ""
    precision = f" in {base.precision}" if base.precision != "auto" else ""
    print(f"base model {base.id}: width {base.width}, {base.epochs} epochs{schedule_text}, test accuracy "
          f"{m['test_accuracy']:.4f}, validation {m['val_accuracy']:.4f}, trained{precision} in "
          f"{m['train_seconds']:.0f} s on {where}")
    if "averaged" in m:
        kept = "averaged" if m["averaged"] else "trained"
        print(f"weights kept: {kept} (validation {m['val_accuracy_averaged']:.4f} averaged, "
              f"{m['val_accuracy_trained']:.4f} trained)")
    return 0


COMMANDS = {"data": _cmd_data, "profile": _cmd_profile, "train-base": _cmd_train_base}
