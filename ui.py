"""Shared state of the dashboard's pages: the environment from the sidebar, the dataset, the base model config and
its rows in the results store. Thin: everything it computes comes from engine/."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.config import PROFILES, BaseModelConfig
from engine.data import ImageData
from engine.errors import UserError
from engine.latency import DEVICES, DeviceProfile
from engine.paths import cache_dir
from engine.store import ResultsStore


@dataclass(frozen=True)
class Environment:
    """What the sidebar sets: the budget profile and width, both ends of the link, and the accuracy requirement."""

    profile: str = "quick"
    width: float = 0.25
    device: DeviceProfile = DEVICES.get("pi3")
    server: DeviceProfile = DEVICES.get("rtx2080ti")
    rate_bps: float = 40e3 * 8
    accuracy_drop: float = 0.02  # allowed drop below the base model's test accuracy (the paper: 95 -> 93 %)


def environment() -> Environment:
    return st.session_state.get("env", Environment())


@st.cache_resource(show_spinner="Loading the dataset…")
def _data(profile: str, data_env: str | None, cache: str) -> ImageData:
    """The dataset cut to the profile; keyed by where the data and cache are, so a changed location reloads."""
    from engine.data import load_data, subset

    prof = PROFILES.get(profile)
    data = load_data(data_env, cache_dir=Path(cache), download=False)
    if prof.train_limit or prof.test_limit:
        data = subset(data, prof.train_limit, prof.test_limit, seed=0)
    return data


def dataset(profile: str) -> ImageData:
    """The profile's dataset; raises UserError (saying how to provide data) when there is none."""
    return _data(profile, os.environ.get("COINFER_DATA") or None, str(cache_dir()))


def base_config(env: Environment, data: ImageData) -> BaseModelConfig:
    return PROFILES.get(env.profile).base_config(data.fingerprint, width=env.width)


def results(base: BaseModelConfig) -> pd.DataFrame:
    """Every stored row built on `base`, all methods."""
    table = ResultsStore().table()
    return table[table["base_id"] == base.id] if not table.empty else table


def threshold(env: Environment, table: pd.DataFrame) -> float | None:
    """The accuracy a variant needs: the base model's test accuracy minus the allowed drop."""
    if table.empty or "base_test_accuracy" not in table:
        return None
    return float(table["base_test_accuracy"].iloc[0]) - env.accuracy_drop


def require_data(env: Environment) -> ImageData:
    """The dataset, or an error on the page that says how to provide one (and stops the page)."""
    try:
        return dataset(env.profile)
    except UserError as exc:
        st.error(str(exc))
        st.stop()
        raise  # unreachable: st.stop() raises
