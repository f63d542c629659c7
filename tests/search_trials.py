"""Trials of a search study with known figures, written through Optuna's API the way `engine.search.study.Search`
tells them (its user attributes and constraints), without running jobs: for the tests of what pages read of a study."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from engine.search.objective import CONSTRAINTS, Environment, constraints, feasible, latency_of, objective_values

SPLITS = ("server_only", "stem", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "device_only")


def _choices(row: Mapping[str, Any]) -> tuple[dict, dict]:
    params: dict[str, Any] = {"split": row["split"]}
    distributions: dict[str, Any] = {"split": CategoricalDistribution(SPLITS)}
    bits = (row.get("knobs") or {}).get("bits")
    if isinstance(bits, int):
        params["bits"], distributions["bits"] = bits, IntDistribution(1, 8)
    return params, distributions


def _described(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"variant_id": row["id"], "method": row["method"], "split": row["split"], "knobs": dict(row["knobs"])}


def complete(row: Mapping[str, Any], env: Environment, drop: float, objective: str = "latency",
             charged_s: float = 60.0, source: str = "job") -> FrozenTrial:
    """A trial told its row's values, as `Search._finish` tells it."""
    cons = constraints(row, env, drop)
    lat = latency_of(row, env)
    attrs = {**_described(row), **{k: lat[k] for k in ("latency", "t_device", "t_transmit", "t_server")},
             "constraints": cons, "feasible": feasible(cons),
             "val_accuracy": float(row["deployed_val_accuracy"]), "test_accuracy": float(row["accuracy"]),
             "bits": float(row["bits_actual"]), "device_flops": float(row["device_flops"]),
             "charged_s": charged_s, "worker_s": charged_s if source == "job" else 0.0, "source": source,
             "prune_run": None}
    params, distributions = _choices(row)
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=objective_values(row, env, objective), params=params,
        distributions=distributions, user_attrs=attrs,
        constraints=dict(zip(CONSTRAINTS, cons, strict=True)) if objective == "latency" else None)


def pruned(row: Mapping[str, Any], charged_s: float = 30.0) -> FrozenTrial:
    """A trial the pruner stopped after one pruning level."""
    params, distributions = _choices(row)
    return optuna.trial.create_trial(
        state=TrialState.PRUNED, params=params, distributions=distributions, intermediate_values={0: 0.1},
        user_attrs={**_described(row), "partial": True, "charged_s": charged_s, "worker_s": charged_s})


def failed(row: Mapping[str, Any], error: str = "out of memory", charged_s: float = 5.0) -> FrozenTrial:
    """A trial whose job failed."""
    params, distributions = _choices(row)
    return optuna.trial.create_trial(
        state=TrialState.FAIL, params=params, distributions=distributions,
        user_attrs={**_described(row), "error": error, "charged_s": charged_s, "worker_s": charged_s})
