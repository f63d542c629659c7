"""What the benchmark scripts share: the default data location and a profile's data and base model config."""

from __future__ import annotations

from pathlib import Path

from engine.config import BaseModelConfig
from engine.data import ImageData, load_data, subset
from engine.profiles import PROFILES, Profile

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def profile_data(profile_name: str, data_path: str | Path,
                 model: str = "resnet18") -> tuple[Profile, ImageData, BaseModelConfig]:
    """The profile, its dataset (cut to the profile's limits, seed 0, as the sweep does) and its base config for
    `model` (a model reference)."""
    profile = PROFILES.get(profile_name)
    data = subset(load_data(data_path), profile.train_limit, profile.test_limit, seed=0)
    return profile, data, profile.base_config(data.fingerprint, model=model)
