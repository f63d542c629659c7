"""What a job is and how one runs: `JobSpec` (a variant, or a dataset to locate, as JSON in the job table) and
`execute`, the one code path of local workers and Dask tasks alike, so both produce the same results row for the
same spec. The data a spec was planned on is loaded once per process (`load_job_data`)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import BaseModelConfig, VariantConfig, config_id, frozen_value
from engine.errors import UserError
from engine.locks import file_lock
from engine.paths import cache_dir

if TYPE_CHECKING:  # torch and the data sources load with it: only when a job runs
    from engine.data import ImageData

BASE_SHARE = 0.6  # of a job's progress bar, when its base model must be trained first

Progress = Callable[[float, str], None]
_DATA_CACHE: dict[tuple, Any] = {}
_DATA_LOCK = threading.Lock()


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs to rebuild and measure one variant: the method, split and knobs, the base model's full
    config, the profile (data subset and budgets) and where the data is. `kind="data"` locates or downloads a
    dataset instead."""

    method: str
    split: str
    profile: str
    base: dict[str, Any]
    knobs: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    kind: str = "variant"

    @staticmethod
    def for_variant(cfg: VariantConfig, profile: str, data: str | os.PathLike[str] | None) -> JobSpec:
        """The spec of `cfg`; a data path is made absolute, since workers may run elsewhere."""
        path = str(Path(data).expanduser().resolve()) if data else None
        return JobSpec(cfg.method, cfg.split, profile, dataclasses.asdict(cfg.base), dict(cfg.knobs), path)

    @staticmethod
    def for_data(data: str | os.PathLike[str] | None) -> JobSpec:
        path = str(Path(data).expanduser().resolve()) if data else None
        return JobSpec("data", "", "", {}, {}, path, kind="data")

    @property
    def width(self) -> float:
        return float(self.base.get("width", 0.0))

    @property
    def seed(self) -> int:
        return int(self.base.get("seed", 0))

    def variant(self) -> VariantConfig:
        base = BaseModelConfig(**self.base)
        knobs = tuple(sorted(frozen_value(self.knobs).items()))
        return VariantConfig(self.method, self.split, base, knobs)

    @property
    def id(self) -> str:
        if self.kind == "data":
            return "data-" + config_id({"data": self.data})[:11]
        return self.variant().id

    @property
    def base_id(self) -> str | None:
        return None if self.kind == "data" else self.variant().base.id

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> JobSpec:
        return JobSpec(**json.loads(text))


def load_job_data(spec: JobSpec, cache: Path) -> ImageData:
    """The dataset a spec was planned on, cut to its profile; cached per process. A data path missing on this
    machine falls back to $COINFER_DATA and cache/data/ (a Dask worker elsewhere), and the fingerprint check
    catches a different dataset."""
    from engine.data import load_data, subset
    from engine.profiles import PROFILES

    path = spec.data if spec.data and Path(spec.data).exists() else None
    profile = PROFILES.get(spec.profile)
    key = (path, os.environ.get("COINFER_DATA"), str(cache), spec.profile, spec.seed)
    with _DATA_LOCK:
        if key not in _DATA_CACHE:
            data = load_data(path, cache_dir=cache, download=False)
            if profile.train_limit or profile.test_limit:
                data = subset(data, profile.train_limit, profile.test_limit, seed=spec.seed)
            _DATA_CACHE.clear()  # one dataset at a time: they are large
            _DATA_CACHE[key] = data
        data = _DATA_CACHE[key]
    expected = spec.base.get("dataset")
    if expected and data.fingerprint != expected:
        raise UserError(f"the dataset found here ({data.fingerprint}) is not the one this job was planned on "
                        f"({expected}): point --data or COINFER_DATA at the same data")
    return data


def execute(spec: JobSpec, progress: Progress | None = None, cache: Path | None = None) -> dict | None:
    """Run one job in this process: the code path of local workers and Dask tasks alike, so both produce the same
    row for the same spec.

    Args:
        spec: the job.
        progress: called with (fraction done, message); it may raise to stop the job (a cancel).
        cache: the cache directory (default: `engine.paths.cache_dir()`).

    Returns:
        The variant's results row, or None for a data job.
    """
    from engine.methods import METHODS, RunContext
    from engine.profiles import PROFILES

    cache = cache_dir() if cache is None else cache
    if spec.kind == "data":
        from engine.data import load_data

        if progress:
            progress(0.0, "locating the dataset (downloading CIFAR-10 if needed)")
        data = load_data(spec.data, cache_dir=cache, download=True)
        if progress:
            progress(1.0, f"{data.name}: {len(data.train_y)} / {len(data.test_y)} images")
        return None
    method = METHODS.get(spec.method)
    cfg = spec.variant()
    report = progress or (lambda fraction, message: None)
    report(0.0, "loading data")
    data = load_job_data(spec, cache)
    from engine.train import base_checkpoint_path

    ckpt = base_checkpoint_path(cfg.base, cache)
    split_at = 0.0 if ckpt.exists() else BASE_SHARE
    ctx = RunContext(data, PROFILES.get(spec.profile), cache,
                     progress=lambda f, m: report(split_at * f, f"base model: {m}"))
    with file_lock(ckpt.with_suffix(".lock"), lambda: report(0.0, f"waiting for base model {cfg.base.id}")):
        ctx.base(cfg.base)  # one trainer per base model; the others wait, then load it
    report(split_at, "measuring")
    ctx.progress = lambda f, m: report(split_at + (1.0 - split_at) * f, m)
    from engine.intermediate import reporting_to

    with reporting_to(getattr(progress, "record", None)):  # a lease records what the run reports
        return method.run(cfg, ctx)


def result_summary(row: dict | None) -> dict | None:
    """The few figures of a row shown beside its job."""
    if row is None:
        return None
    keys = ("accuracy", "bits_actual", "bits_ideal", "device_flops", "device_memory_bytes")
    return {k: row[k] for k in keys if k in row and isinstance(row[k], (int, float))}

