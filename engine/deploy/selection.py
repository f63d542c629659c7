"""Selections: a small versioned JSON naming one variant, its measured figures and the environment it was chosen for;
written from a results row, and read back from untrusted bytes or text (JSON only, capped, every field checked)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

import engine
from engine.config import BaseModelConfig, VariantConfig, frozen_value
from engine.errors import UserError
from engine.knobs import is_knob_value
from engine.profiles import PROFILES
from engine.untrusted import json_object

SELECTION_FORMAT = "coinfer-selection"
SELECTION_VERSION = 1
MAX_SELECTION_BYTES = 1 << 20
_BASE_FIELDS = {f.name: f for f in dataclasses.fields(BaseModelConfig)}

# ------------------------------------------------------------------------------------------------------ selection


def finite_json(value: Any, where: str) -> Any:
    """`value` as plain JSON with finite numbers only: NaN and infinities are dropped from mappings (a missing figure)
    and become None inside lists; numpy and torch scalars become numbers."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            item = finite_json(v, f"{where}.{k}")
            if item is not None or v is None:
                out[str(k)] = item
        return out
    if isinstance(value, (list, tuple)):
        return [finite_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return finite_json(dataclasses.asdict(value), where)
    if hasattr(value, "tolist"):
        return finite_json(value.tolist(), where)
    return str(value)


def _row_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in row.items()}  # a dict or a pandas Series


def base_of_row(row: Mapping[str, Any]) -> BaseModelConfig:
    """The base model config a results row was built on: the profile whose base config at the row's data, width and
    seed has the row's `base_id`."""
    for name in PROFILES:
        try:
            base = PROFILES.get(name).base_config(str(row["dataset_fingerprint"]), width=float(row["width"]),
                                                  seed=int(row["seed"]), model=str(row.get("model") or "resnet18"),
                                                  weights=str(row.get("weights") or ""))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"row {row.get('id')!r} lacks its dataset fingerprint, width or seed: re-measure it "
                            "with `python -m engine run`") from None
        if base.id == row.get("base_id"):
            return base
    raise UserError(f"row {row.get('id')!r}: no profile ({', '.join(PROFILES)}) gives its base model "
                    f"{row.get('base_id')!r}; it was measured with another budget and cannot be exported")


def row_config(row: Mapping[str, Any]) -> VariantConfig:
    """The VariantConfig of a results row, checked against the row's id."""
    row = _row_dict(row)
    knobs = row.get("knobs") or {}
    if not isinstance(knobs, Mapping):
        raise UserError(f"row {row.get('id')!r} has no knobs mapping: re-measure it")
    cfg = VariantConfig.make(str(row["method"]), str(row["split"]), base_of_row(row), **frozen_value(dict(knobs)))
    if cfg.id != row.get("id"):
        raise UserError(f"row {row.get('id')!r} does not hash to its config (got {cfg.id}); it was written by another "
                        "version of the engine: re-measure it")
    return cfg


def _metrics(row: Mapping[str, Any]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for k, v in row.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            continue
        if math.isfinite(float(v)) and k not in ("seed", "width", "schema_version"):
            out[str(k)] = int(v) if isinstance(v, (int, np.integer)) else float(v)
    return out


def selection_document(cfg: VariantConfig, metrics: Mapping[str, Any] | None = None,
                       environment: Any = None) -> dict[str, Any]:
    """The versioned selection document of a variant (what `selection_json` returns for a row); of `metrics` (e.g.
    its results row) only the finite numbers are kept."""
    env = environment if environment is not None else {}
    if dataclasses.is_dataclass(env) and not isinstance(env, type):
        env = dataclasses.asdict(env)
    return {
        "format": SELECTION_FORMAT,
        "version": SELECTION_VERSION,
        "config": {"method": cfg.method, "split": cfg.split, "knobs": finite_json(dict(cfg.knobs), "knobs"),
                   "base": dataclasses.asdict(cfg.base)},
        "id": cfg.id,
        "metrics": _metrics(dict(metrics or {})),
        "trained_on": (metrics or {}).get("trained_on"),  # engine.provenance: where its trained parts were computed
        "environment": finite_json(dict(env), "environment"),
        "code_version": engine.__version__,
        "torch_version": _torch_version(),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _torch_version() -> str:
    """torch's version, imported here only: reading a selection (a device without torch) never needs it."""
    import torch

    return torch.__version__


def selection_json(row: Mapping[str, Any], environment: Mapping[str, Any]) -> dict:
    """The selection document of a results row (a dict or a table row) chosen for `environment` (the sidebar's
    device, server, rate, ...): JSON-serialisable, finite numbers only."""
    row = _row_dict(row)
    return selection_document(row_config(row), row, environment)


def _reject(message: str) -> UserError:
    return UserError(f"invalid selection file: {message}")


def _check_names(method: Any, split: Any, model: Any) -> None:
    """The method known to this code base and a split its model may have (their registries import torch)."""
    from engine.methods import METHODS
    from engine.models import DEFAULT_MODEL, plausible_split, split_names

    if method not in METHODS:
        raise _reject(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    model = model if isinstance(model, str) else DEFAULT_MODEL
    if not plausible_split(model, split):
        known = f"; known: {', '.join(split_names(model, False))}" if model == DEFAULT_MODEL else ""
        raise _reject(f"unknown split {split!r}{known}")


def _check_config(config: Any, known: bool = True) -> None:
    """A selection's `config`: a method and split (known ones, with `known`), plain knobs, and a base of the right
    fields and types."""
    if not isinstance(config, dict):
        raise _reject("'config' must be an object with method, split, knobs and base")
    method, split = config.get("method"), config.get("split")
    if not isinstance(method, str) or not isinstance(split, str):
        raise _reject(f"the method {method!r} and split {split!r} must be names")
    if known:
        base = config.get("base")
        _check_names(method, split, base.get("model") if isinstance(base, dict) else None)
    knobs = config.get("knobs", {})
    if not isinstance(knobs, dict):
        raise _reject("'config.knobs' must be an object")
    for k, v in knobs.items():
        if not is_knob_value(v):
            raise _reject(f"knob {k!r} must be a number, string, boolean, null or a flat list of them")
    _check_base(config.get("base"))


def _check_base(base: Any) -> None:
    """A selection's `config.base`: the fields of BaseModelConfig (those added later optional), each of its type."""
    later = (*BaseModelConfig.ID_OPTIONAL, "weights_path")  # an export of an earlier release lacks those
    required = set(_BASE_FIELDS) - set(later)
    if not isinstance(base, dict) or not required <= set(base) <= set(_BASE_FIELDS):
        raise _reject(f"'config.base' must have the fields {', '.join(_BASE_FIELDS)} (optional: "
                      f"{', '.join(later)})")
    for k, v in base.items():
        kind = _BASE_FIELDS[k].type
        if kind in ("tuple[int, ...]", "tuple[float, ...]"):
            numbers = int if kind == "tuple[int, ...]" else (int, float)
            ok = isinstance(v, list) and len(v) <= 10_000 and all(isinstance(x, numbers) and not isinstance(x, bool)
                                                                   for x in v)
        elif kind == "str":
            ok = isinstance(v, str)
        elif kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            raise _reject(f"base field {k!r} must be of type {kind}, got {v!r}")


def parse_selection(raw: bytes | str, known: bool = True) -> dict:
    """A selection read from untrusted bytes or text: at most 1 MB of UTF-8 JSON (never pickle), the right format and
    version, a known method and split, knobs of JSON scalars (or flat lists of them), finite numbers, and an id that
    is the hash of its config.

    Args:
        raw: the file's bytes, or its text.
        known: check the method, split and knobs against this code base's registries, which import torch (a device that
            runs the bundle's ONNX program without torch checks them to be names only).

    Returns:
        The selection document.

    Raises:
        UserError: saying what is wrong, for anything else.
    """
    doc = json_object(raw, MAX_SELECTION_BYTES, _reject, "upload the .json file coinfer exported")
    if doc.get("format") != SELECTION_FORMAT:
        raise _reject(f"format is {doc.get('format')!r}, expected {SELECTION_FORMAT!r}")
    version = doc.get("version")
    if type(version) is not int or version != SELECTION_VERSION:
        raise _reject(f"version {version!r} is not supported (this coinfer reads version {SELECTION_VERSION}); "
                      "export it again with this version")
    config = doc.get("config")
    _check_config(config, known)
    if not isinstance(doc.get("trained_on"), (str, type(None))):
        raise _reject("'trained_on' must be text or null")
    metrics = doc.get("metrics", {})
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in metrics.values()):
        raise _reject("'metrics' must map names to numbers")
    if not isinstance(doc.get("environment", {}), dict):
        raise _reject("'environment' must be an object")
    try:
        cfg = VariantConfig.make(config["method"], config["split"], BaseModelConfig(**config["base"]),
                                 **frozen_value(dict(config.get("knobs", {}))))
    except UserError as exc:
        raise _reject(str(exc)) from None
    if doc.get("id") != cfg.id:
        raise _reject(f"id {doc.get('id')!r} is not the hash of its config ({cfg.id}): the file was edited or damaged; "
                      "export it again")
    if known:
        _check_knobs(cfg)
    return doc


def _check_knobs(cfg: VariantConfig) -> None:
    """The checks `jobs submit` makes of a variant's knobs (its method's own), for a selection whose id was
    recomputed after an edit."""
    from engine.methods import check_variant
    from engine.profiles import profile_of

    try:
        check_variant(cfg, profile_of(cfg.base).budget_name)
    except UserError as exc:
        raise _reject(str(exc)) from None


def variant_config(selection: dict) -> VariantConfig:
    """The VariantConfig a validated selection names (checked against its id)."""
    config = selection["config"]
    cfg = VariantConfig.make(config["method"], config["split"], BaseModelConfig(**config["base"]),
                             **frozen_value(dict(config["knobs"])))
    if cfg.id != selection.get("id"):
        raise _reject(f"id {selection.get('id')!r} is not the hash of its config ({cfg.id})")
    return cfg
