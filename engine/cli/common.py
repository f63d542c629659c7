"""What the command groups share: argument types, the dataset/profile/width/seed options, the writable cache,
the progress bar, loading the profile's data and base model, and narrowing the results table."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import pandas as pd

from engine.config import BaseModelConfig
from engine.errors import UserError
from engine.paths import cache_dir
from engine.profiles import PROFILES, Profile

if TYPE_CHECKING:
    from engine.data import ImageData
    from engine.latency import DeviceProfile

NARROWING = ("Every row in the store; with --profile or --data, the rows of that base model (--width and --seed pick "
             "it, as in the other commands); with --width or --seed alone, the rows of that width or seed.")


def _number(text: str, kind: type[float] | type[int], ok: Callable[[float], bool], need: str) -> float:
    """An argparse value of type `kind` for which `ok` holds; else an ArgumentTypeError saying `need`."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a {'number' if kind is float else 'whole number'}: {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {need}, got {text}")
    return value


def number_type(kind: type[float] | type[int], ok: Callable[[float], bool], need: str) -> Callable[[str], float]:
    """An argparse type for numbers of `kind` for which `ok` holds.

    Args:
        kind: float or int; ok: the condition; need: what the error says the value must be.
    Returns:
        The converter argparse calls with the option's text.
    """
    return lambda text: kind(_number(text, kind, ok, need))


MAX_SECONDS = 7 * 86400.0  # a duration option (a timeout, a lease, a heartbeat): the OS's timers take no more
MAX_PROCESSES = max(8, 4 * (os.cpu_count() or 1))  # worker processes: more only fight over the cores and memory
MAX_THREADS = 1024  # torch's or onnxruntime's threads
MAX_MESSAGE_BYTES = 1 << 30  # the largest message a server may be told to accept

positive_float = number_type(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
positive_int = number_type(int, lambda v: v >= 1, ">= 1")
port_int = number_type(int, lambda v: 0 <= v <= 65535, "a TCP port from 0 to 65535")  # 0: pick a free one
seed_int = number_type(int, lambda v: 0 <= v < 2**63, "from 0 to 2**63 - 1")  # what torch's generators take
delay_ms = number_type(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")  # milliseconds
seconds = number_type(float, lambda v: 0 < v <= MAX_SECONDS, f"a number of seconds > 0 and at most {MAX_SECONDS:g}")
processes_int = number_type(int, lambda v: 0 <= v <= MAX_PROCESSES, f"from 0 to {MAX_PROCESSES}")
threads_int = number_type(int, lambda v: 1 <= v <= MAX_THREADS, f"from 1 to {MAX_THREADS}")
message_bytes = number_type(int, lambda v: 1 <= v <= MAX_MESSAGE_BYTES, f"from 1 to {MAX_MESSAGE_BYTES:,} bytes")


def add_delay(p: argparse.ArgumentParser, role: str) -> None:
    """Add --delay (alias --delay-ms): the one-way propagation delay from device to server in milliseconds, the
    same in the runtime (`device`, which holds each message that long before sending it) and in the latency model.

    Args:
        p: the parser of one command.
        role: what the delay does in that command, for its help.
    """
    p.add_argument("--delay", "--delay-ms", dest="delay", type=delay_ms, default=0.0, metavar="MS",
                   help=f"one-way propagation delay, device to server, in milliseconds: {role} (default 0)")


def add_memory(p: argparse.ArgumentParser) -> None:
    """Add --memory: what a variant's device part is counted as needing of the device's memory.

    Args:
        p: the parser of one command.
    """
    from engine.latency import MEMORY_FIGURES

    p.add_argument("--memory", choices=list(MEMORY_FIGURES), default="model",
                   help="the device part's memory: the model's parameters + largest activations (default), or the "
                        "measured peak resident memory of a TorchScript or ONNX Runtime device process "
                        "(`python -m engine footprint`; the model's figure where a row has none)")


def device_of(args: argparse.Namespace) -> DeviceProfile:
    """The device --device and --memory name."""
    from engine.latency import resolve_device

    return dataclasses.replace(resolve_device(args.device), memory_figure=args.memory)


def split_list(text: str) -> list[str]:
    """The names of a comma-separated --splits value."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one split point, e.g. --splits layer2,layer3")
    return names


def add_common(p: argparse.ArgumentParser) -> None:
    """Add the options that pick the dataset and base model: --data, --profile, --model, --weights, --splits,
    --width and --seed.

    Args:
        p: the parser of one command.
    """
    p.add_argument("--data", help="dataset: CIFAR-10 root, ImageFolder dir with train/ and test/, or a .tar/.tar.gz "
                                  "of one (default: $COINFER_DATA, then cache/data/, then torchvision's download)")
    p.add_argument("--profile", default="quick", help="budget: smoke, quick (CPU default), quick-bf16 (quick in "
                                                       "bf16, for a CPU with AVX-512 BF16 or AMX), paper-cpu (width "
                                                       "1.0 in bf16 on such a CPU) or paper (GPU)")
    p.add_argument("--model", default="resnet18",
                   help="the model: a registered one (resnet18, mobilenetv2, vgg11_bn, vgg16_bn) or one's own as "
                        "path/to/file.py:ClassName or package.module:factory (default resnet18)")
    p.add_argument("--weights", metavar="FILE", help="trained weights (a state dict saved with torch.save) to start "
                                                     "from instead of training the base model")
    p.add_argument("--splits", type=split_list, metavar="A,B",
                   help="split points, comma-separated: the model's named points or nodes of its graph (list them "
                        "with `profile --all-splits`)")
    p.add_argument("--width", type=positive_float, help="width multiplier (default: the profile's)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of training, splits and subsets (default 0)")


def writable_cache() -> Path:
    """The cache directory, created and checked writable.

    Returns:
        Its path; a UserError saying to set COINFER_CACHE when it cannot be written.
    """
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


def data_path(args: argparse.Namespace) -> str | None:
    """The dataset the command names: --data, else $COINFER_DATA, else None (the default lookup).

    Args:
        args: the parsed command line.

    Returns:
        The path, or None.
    """
    return args.data or os.environ.get("COINFER_DATA") or None


class Bar:
    """Progress on stderr driven by (fraction, message) callbacks: a tqdm bar on a terminal; to a file or a pipe,
    plain lines ("desc: 42% message"), one per whole percent or new step (a message that differs in more than its
    numbers), never a carriage return."""

    def __init__(self, desc: str, stream: TextIO | None = None) -> None:
        self.desc, self.stream = desc, stream if stream is not None else sys.stderr
        self.bar = None
        self._last: tuple[int, str] | None = None
        self._pending = self._printed = ""
        if _is_tty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=1000, desc=desc, unit="‰", file=self.stream, leave=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.bar is not None:
            self.bar.n = int(1000 * fraction)
            self.bar.set_postfix_str(message, refresh=True)
            return
        line = f"{self.desc}: {int(100 * fraction):3d}% {message}".rstrip()
        step = (int(100 * fraction), re.sub(r"[\d.]+", "#", message))
        if self._last is None or step[0] > self._last[0] or step[1] != self._last[1]:
            self._last, self._pending = step, ""
            print(line, file=self.stream, flush=True)
            self._printed = line
        elif line != self._printed:
            self._pending = line

    def write(self, line: str) -> None:
        """Print a line on stdout without breaking the bar."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        """End the bar; to a file, print the last state if it was not printed."""
        if self.bar is not None:
            self.bar.close()
        elif self._pending:
            print(self._pending, file=self.stream, flush=True)
            self._pending = ""


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def load(args: argparse.Namespace) -> tuple[Profile, ImageData, BaseModelConfig]:
    """The profile, its (subset of the) dataset and the base model config the options name.

    Args:
        args: the parsed command line, with the options of `add_common`.

    Returns:
        The profile, the data and the base model config.
    """
    from engine.data import load_data, subset
    from engine.models import DEFAULT_MODEL, normalize_reference
    from engine.train import weights_reference

    profile = PROFILES.get(args.profile)
    model = normalize_reference(getattr(args, "model", None) or DEFAULT_MODEL)
    weights, weights_path = weights_reference(args.weights) if getattr(args, "weights", None) else ("", "")
    data = load_data(args.data, cache_dir=writable_cache())
    if profile.train_limit or profile.test_limit:
        data = subset(data, profile.train_limit, profile.test_limit, seed=args.seed)
    base = profile.base_config(data.fingerprint, width=args.width, seed=args.seed, model=model, weights=weights,
                               weights_path=weights_path)
    return profile, data, base


def chosen_splits(args: argparse.Namespace, base: BaseModelConfig) -> list[str] | None:
    """The split points a command names (--splits, then --split where it has one), checked against the model;
    None where it names none."""
    from engine.models import check_splits

    names = (getattr(args, "splits", None) or []) + (getattr(args, "split", None) or [])
    if not names:
        return None
    check_splits(base.model, names)
    return names


def narrow(table: pd.DataFrame, args: argparse.Namespace) -> tuple[pd.DataFrame, str, str]:
    """The rows NARROWING says.

    Args:
        table: the results table.
        args: the parsed command line (profile and seed default to None).

    Returns:
        The rows, the words that name them ("" for all) and the options that name the profile.
    """
    if args.profile is not None or args.data is not None:
        args.profile, args.seed = args.profile or "quick", args.seed or 0
        base_id = load(args)[2].id
        return table[table["base_id"] == base_id], f" of base model {base_id}", f" --profile {args.profile}"
    narrowed = ""
    for column in ("width", "seed"):
        if getattr(args, column) is not None:
            table, narrowed = table[table[column] == getattr(args, column)], " with these options"
    return table, narrowed, ""
