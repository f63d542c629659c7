"""Frozen configuration dataclasses. A config's id is a hash of its canonical JSON: the cache key, job key,
URL parameter and export name of everything built from it."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from engine.errors import UserError

SCHEMA_VERSION = 1
T = TypeVar("T")


def frozen_value(value: Any) -> Any:
    """A value decoded from JSON as configs hold it: lists become tuples, recursively (hashable, and the same
    canonical JSON, so the same config id); a mapping keeps its keys, its values converted.

    Args:
        value: what json.loads gave (or a config value already frozen).

    Returns:
        The value with every list a tuple.
    """
    if isinstance(value, (list, tuple)):
        return tuple(frozen_value(v) for v in value)
    if isinstance(value, Mapping):
        return {k: frozen_value(v) for k, v in value.items()}
    return value


def config_from_knobs(cls: type[T], knobs: Mapping[str, Any] | Iterable[tuple[str, Any]], prefix: str, what: str,
                      **defaults: Any) -> T:
    """The frozen config `cls` from a variant's knobs named `prefix` + field (other knobs ignored; lists become
    tuples); `defaults` fill the rest. An unknown knob with the prefix, or one whose value is not of its field's
    type, is a UserError naming it."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kw = dict(defaults)
    for key, value in dict(knobs).items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name not in names:
            raise UserError(f"unknown {what} knob {key!r}; known: {', '.join(prefix + n for n in sorted(names))}")
        value = frozen_value(value)
        if not _is_of(value, hints[name]):
            raise UserError(f"{what} knob {key} must be {_type_text(hints[name])}, got {value!r}")
        kw[name] = value
    return cls(**kw)


def _kinds(hint: Any) -> tuple[type, ...]:
    """The outer types a field's hint allows: `int | None` -> (int, NoneType), `tuple[float, ...]` -> (tuple,)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(typing.get_origin(o) or o for o in options)


def _is_of(value: Any, hint: Any) -> bool:
    """Whether `value` fits a field's type hint (outer types only: tuple[float, ...] takes any tuple); an int fits
    float, a bool fits only bool."""
    if hint is Any:
        return True
    kinds = _kinds(hint)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (isinstance(value, int) and float in kinds)


def _type_text(hint: Any) -> str:
    return " or ".join("None" if k is type(None) else getattr(k, "__name__", str(k)) for k in _kinds(hint))


def _id_fields(obj: Any) -> dict[str, Any]:
    """A config dataclass's fields as plain data (nested configs too), leaving out its `ID_EXCLUDED` fields (labels)
    and the fields of its `ID_OPTIONAL` that are at their default: fields added after a config was released, so
    that configs not using them keep their ids."""
    optional = getattr(obj, "ID_OPTIONAL", ())
    excluded = getattr(obj, "ID_EXCLUDED", ())
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in excluded or (f.name in optional and value == f.default):
            continue
        out[f.name] = _id_fields(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def canonical_json(obj: Any) -> str:
    if dataclasses.is_dataclass(obj):
        obj = _id_fields(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_id(obj: Any) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


# how training runs: "auto" autocasts to bf16 on CUDA and trains in fp32 elsewhere; "bf16" autocasts on every device
# (a CPU with native bf16, AVX-512 BF16 or AMX, trains about 1.6x faster than in fp32: BENCHMARKS.md); "fp32" never
# autocasts
PRECISIONS = ("auto", "bf16", "fp32")
# the width multipliers a base model may have: below 1/64 the stem has no channel, above 4 a CIFAR ResNet18 has
# 180 M parameters, more than any profile here trains
MIN_WIDTH, MAX_WIDTH = 1 / 64, 4.0
MAX_EPOCHS = 1000  # of a base model's training
MAX_INPUT_SIZE = 1024  # pixels of a side of a training image (progressive resizing)


@dataclass(frozen=True)
class BaseModelConfig:
    """How the unmodified base model is trained. `dataset` is the data's fingerprint (source hash + subset)."""

    dataset: str
    width: float = 0.25
    seed: int = 0
    epochs: int = 15
    batch_size: int = 256
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    val_fraction: float = 0.1
    # a registered model's name, or a model of one's own: `/abs/path/file.py:ClassName` or `package.module:factory`
    model: str = "resnet18"
    # progressive resizing (small images first, the data's own size last), either as the input size of each epoch
    # in pixels (square) or as each epoch's fraction of the data's height and width; both empty: every epoch at the
    # data's size
    sizes: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    # training precision of the base model and of the variants trained from it (`PRECISIONS`)
    precision: str = "auto"
    # the profile (engine.profiles) whose budgets its variants follow: a label, in neither the id nor the repr (the
    # model it names is the same whichever profile asked for it); "" in configs saved before it was recorded
    profile: str = field(default="", compare=False)
    # trained weights to start from instead of training: the sha256 of the state-dict file (in the id), and where
    # the file is (a label: the same weights elsewhere are the same base model); "" trains the base model
    weights: str = ""
    weights_path: str = field(default="", compare=False)
    # weight averaging: the decay of an exponential moving average of the weights (and batch-norm statistics) kept
    # beside the trained ones; the run keeps whichever of the two scores higher on validation. 0: none
    ema: float = 0.0
    # added later: in the id (and repr) only when set
    ID_OPTIONAL: ClassVar[tuple[str, ...]] = ("sizes", "scales", "precision", "weights", "ema")
    ID_EXCLUDED: ClassVar[tuple[str, ...]] = ("profile", "weights_path")

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise UserError(f"width must be > 0, got {self.width}; try --width 0.25")
        if not MIN_WIDTH <= self.width <= MAX_WIDTH:
            raise UserError(f"width must be between {MIN_WIDTH:g} (one channel in the stem) and {MAX_WIDTH:g}, got "
                            f"{self.width:g}; try --width 0.25")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise UserError(f"seed must be a whole number from 0 to 2**63 - 1, got {self.seed!r}; try --seed 0")
        if not 1 <= self.epochs <= MAX_EPOCHS or self.batch_size < 1:
            raise UserError(f"epochs and batch size must be positive integers (epochs at most {MAX_EPOCHS}), got "
                            f"{self.epochs} and {self.batch_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        object.__setattr__(self, "sizes", frozen_value(self.sizes))  # a JSON round trip gives a list
        object.__setattr__(self, "scales", tuple(float(f) for f in self.scales))
        if self.sizes and (len(self.sizes) != self.epochs or not 1 <= min(self.sizes) <= max(self.sizes)
                           <= MAX_INPUT_SIZE):
            raise UserError(f"sizes must give an input size from 1 to {MAX_INPUT_SIZE} for each of the {self.epochs} "
                            f"epochs, got {list(self.sizes)}; e.g. --sizes 16x6,24x4,32x3")
        if self.scales and (len(self.scales) != self.epochs or not all(0.0 < f <= 1.0 for f in self.scales)):
            raise UserError(f"scales must give a fraction in (0, 1] of the data's size for each of the {self.epochs} "
                            f"epochs, got {list(self.scales)}")
        if self.sizes and self.scales:
            raise UserError("give the epochs' input sizes either in pixels (sizes) or as fractions (scales), not both")
        if self.weights and not (len(self.weights) == 64 and all(c in "0123456789abcdef" for c in self.weights)):
            raise UserError(f"weights must be the sha256 of a weights file (64 hex digits), got {self.weights!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if not 0.0 <= self.ema < 1.0:
            raise UserError(f"ema must be a decay in [0, 1) (0: no weight averaging), got {self.ema}; e.g. 0.999")

    def __repr__(self) -> str:  # the generated repr, optional fields only when set (intermediate caches key on it)
        shown = [f for f in dataclasses.fields(self) if f.name not in self.ID_EXCLUDED
                 and (f.name not in self.ID_OPTIONAL or getattr(self, f.name) != f.default)]
        return f"{type(self).__qualname__}({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in shown)})"

    @property
    def id(self) -> str:
        return config_id(self)

    def input_size(self, epoch: int, image_size: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) of the training images in `epoch` (0-based) for data of `image_size`."""
        if self.sizes:
            return self.sizes[epoch], self.sizes[epoch]
        if self.scales:
            (h, w), f = image_size, self.scales[epoch]
            return max(1, round(h * f)), max(1, round(w * f))
        return image_size


def size_schedule(*stages: tuple[float, int]) -> tuple[float, ...]:
    """Per-epoch scales from (fraction of the data's size, epochs) stages: size_schedule((0.5, 2), (1.0, 1))."""
    return tuple(f for f, n in stages for _ in range(n))


REPLICATE_KNOB = "replicate"  # a variant's training seed beside its base model's (`VariantConfig.training_seed`)


def training_seed(base_seed: int, replicate: int) -> int:
    """The seed a variant trains with: its base model's for replicate 0, a distinct one for each other."""
    return base_seed + 1_000_003 * replicate


@dataclass(frozen=True)
class VariantConfig:
    """One point of the trade-off: a method applied at a split of a base model, with its knobs."""

    method: str
    split: str
    base: BaseModelConfig
    knobs: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    @property
    def id(self) -> str:
        return config_id(self)

    def knob(self, name: str, default: Any = None) -> Any:
        return dict(self.knobs).get(name, default)

    @property
    def training_seed(self) -> int:
        """The seed of what the variant itself trains (pruning fine-tuning, encoders): the base model's seed, moved
        by the `replicate` knob, so that the same configuration re-run with other seeds (replicates 1, 2, ...) shows
        the spread of its training while the base model stays the same."""
        return training_seed(self.base.seed, int(self.knob(REPLICATE_KNOB, 0)))

    @staticmethod
    def make(method: str, split: str, base: BaseModelConfig, /, **knobs: Any) -> VariantConfig:
        return VariantConfig(method, split, base, tuple(sorted(knobs.items())))

    def replicate(self, k: int) -> VariantConfig:
        """The same configuration trained with replicate seed `k` (0: this one's own seed)."""
        knobs = {n: v for n, v in self.knobs if n != REPLICATE_KNOB}
        return VariantConfig.make(self.method, self.split, self.base, **knobs, **({REPLICATE_KNOB: k} if k else {}))
