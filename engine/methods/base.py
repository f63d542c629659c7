"""What every method shares: the Method interface and its registry, the RunContext a method runs in, knob checks, and
the columns every row carries."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

import engine
from engine.coding import CodingEnv, Deployed
from engine.config import BaseModelConfig, VariantConfig
from engine.data import mean_png_bits
from engine.errors import UserError
from engine.locks import exclusive
from engine.models import DEFAULT_MODEL, END_POINTS
from engine.pareto import DECISION_COLUMN
from engine.provenance import describe_environments
from engine.registry import Registry
from engine.train import base_checkpoint_path, load_or_train_base
from engine.training import load_checkpoint


@dataclass
class RunContext(CodingEnv):
    """What a method needs to build and measure a variant: a coding's environment (the data cut to the profile, the
    profile's budgets, the cache, progress) and the base models loaded so far."""

    _bases: dict[str, tuple[nn.Module, dict]] = field(default_factory=dict)

    def base(self, cfg: BaseModelConfig) -> tuple[nn.Module, dict]:
        """The trained base model and its checkpoint (trained now when not cached and training is allowed)."""
        if cfg.id not in self._bases:
            if not cfg.weights and not base_checkpoint_path(cfg, self.cache).exists():
                self.require_training(f"the base model {cfg.id}")
            self._bases[cfg.id] = load_or_train_base(cfg, self.data, self.cache, self.progress)
        return self._bases[cfg.id]

    def cached_run(self, path: Path, what: str, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """A training run checkpointed at `path`: loaded when cached, else trained once (a worker that finds another
        training the same run waits for it, then loads it).

        Args:
            path: the finished run's checkpoint; what: the run, named in a `NotTrained` error; train: runs it and
                saves it at `path`.
        Returns:
            the run's checkpoint.
        """
        if (cached := load_checkpoint(path)) is not None:
            return cached
        self.require_training(what)
        with exclusive(path):
            if (cached := load_checkpoint(path)) is not None:
                return cached
            return train()

    def png_bits(self) -> float:
        return mean_png_bits(self.data, self.cache)


class Chooser(Protocol):
    """What a method's optional `suggest(chooser, base, split)` asks its choices of (an Optuna trial is one): a value
    of `choices` under `name`, the same choices under the same name in every trial of a search."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        ...


class Method(Protocol):
    """A method compared on the plane (the paper's Figure 3 curves): it proposes variants, checks their knobs, builds
    and measures a variant's parts, and deploys them. Register an instance in `METHODS` where it is defined."""

    def variants(self, base: BaseModelConfig, splits: list[str]) -> list[VariantConfig]:
        """The variants a sweep measures for this base model.

        Args:
            base: the base model; its recorded profile sets the budgets.
            splits: the split points the grid covers (end points included when the method has variants there).
        Returns:
            one config per variant, cheapest first where the method knows.
        """
        ...

    def check(self, cfg: VariantConfig, profile: str) -> None:
        """Raise a UserError for an unknown knob or one whose value the run could not use, before any job is queued:
        every knob the run reads, read the way it reads it, over the budget of `profile`.

        Args:
            cfg: the variant; profile: the name of the profile whose budgets fill the knobs it leaves unset.
        """
        ...

    def run(self, cfg: VariantConfig, ctx: RunContext) -> dict:
        """Build the variant's parts (training what is not cached) and measure them on the whole test set.

        Args:
            cfg: the variant; ctx: data, profile, cache, progress and the loaded base models.
        Returns:
            its results row (`base_row` columns plus the method's own).
        """
        ...

    def deploy(self, cfg: VariantConfig, ctx: RunContext) -> Deployed:
        """The parts the variant deploys, built from the cached models (trained now only when missing and
        `ctx.may_train`).

        Args:
            cfg: the variant; ctx: as for `run`.
        Returns:
            the device and server parts and the coding's tables.
        """
        ...


METHODS: Registry[Method] = Registry("method")


def check_variant(cfg: VariantConfig, profile: str) -> None:
    """The method's `check` of a variant's knobs (a registered method without one takes any knobs); a knob of the
    wrong type is a UserError too."""
    check = getattr(METHODS.get(cfg.method), "check", None)
    if check is None:
        return
    try:
        check(cfg, profile)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{cfg.method} at {cfg.split}: a knob cannot be used: {exc}") from None


def check_knob_names(cfg: VariantConfig, known: Iterable[str], prefixes: Iterable[str] = ()) -> None:
    """A UserError naming the first knob of `cfg` that is neither in `known` nor starts with one of `prefixes`."""
    known, prefixes = sorted(known), tuple(prefixes)
    for name, _ in cfg.knobs:
        if name not in known and not name.startswith(prefixes):
            names = ", ".join([*known, *(p + "*" for p in prefixes)])
            raise UserError(f"{cfg.method} has no knob {name!r}; its knobs: {names}")


def refuse_end_points(cfg: VariantConfig, does: str) -> None:
    """A UserError when `cfg` is at an end point, which has no split feature for the method to work on."""
    if cfg.split in END_POINTS:
        raise UserError(f"{cfg.method} {does}; {cfg.split!r} has none: use the `original` method for the end points")


def check_training_knobs(knobs: Mapping[str, Any]) -> None:
    """The fine-tuning knobs a pruning method shares: batch_size, lr, momentum and weight_decay."""
    knob_number("batch_size", knobs["batch_size"], int, 1)
    for name, high in (("lr", math.inf), ("momentum", 1.0), ("weight_decay", 1.0)):
        knob_number(name, knobs[name], float, 0.0, high)


def knob_number(name: str, value: Any, kind: Callable[[Any], Any] = float, low: float = -math.inf,
                high: float = math.inf) -> Any:
    """`value` as an int or a float in [low, high]; a UserError naming the knob otherwise (2.5 is no int, nor is
    True a number)."""
    what = "a whole number" if kind is int else "a number"
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or (kind is int and value != int(value))):
        raise UserError(f"knob {name} must be {what}, got {value!r}")
    if not low <= value <= high:
        bounds = (f"at least {low:g}" if high == math.inf else f"at most {high:g}" if low == -math.inf
                  else f"in [{low:g}, {high:g}]")
        raise UserError(f"knob {name} must be {bounds}, got {value!r}")
    return kind(value)


def base_row(cfg: VariantConfig, ctx: RunContext, *, accuracy: float, deployed_val_accuracy: float,
             **metrics: Any) -> dict:
    """The columns every row carries: identity, provenance, the data's reference figures, and the variant's test and
    validation accuracy beside the base model's. The environments of the trained parts the row uses
    (`<part>_trained_on` metrics: pruning run, encoder) and the base model's become one `trained_on` column.

    Args:
        cfg: the variant; ctx: where it ran.
        accuracy: top-1 accuracy on the test set, as deployed (it reports).
        deployed_val_accuracy: top-1 accuracy on the validation images, measured the same way (choices read it).
        metrics: the method's other columns.
    Returns:
        the row.
    """
    _, ckpt = ctx.base(cfg.base)
    parts = [metrics.pop(k) for k in sorted((k for k in metrics if k.endswith("_trained_on")),
                                            key=lambda k: k != "prune_trained_on")]
    return {
        "id": cfg.id,
        "method": cfg.method,
        "split": cfg.split,
        "knobs": dict(cfg.knobs),
        "dataset": ctx.data.name,
        "dataset_fingerprint": ctx.data.fingerprint,
        "width": cfg.base.width,
        # a model of one's own, or trained weights given: in the rows that have them (the default's rows omit them)
        **({"model": cfg.base.model} if cfg.base.model != DEFAULT_MODEL else {}),
        **({"weights": cfg.base.weights} if cfg.base.weights else {}),
        "seed": cfg.base.seed,
        "base_id": cfg.base.id,
        "base_test_accuracy": ckpt["metrics"]["test_accuracy"],
        "base_val_accuracy": ckpt["metrics"].get("val_accuracy"),
        "train_seconds": ckpt["metrics"]["train_seconds"],
        "trained_on": describe_environments([ckpt["metrics"].get("trained_on"), *parts]),
        "test_images": len(ctx.data.test_y),
        "png_bits": ctx.png_bits(),
        "code_version": engine.__version__,
        "torch_version": torch.__version__,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "accuracy": accuracy,
        DECISION_COLUMN: deployed_val_accuracy,
        **metrics,
    }
