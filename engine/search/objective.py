"""What a search minimises, from a measured row (pure): the modelled end-to-end latency for an edge environment
under the constraint that validation accuracy meets the threshold and the device part fits the device's memory
(`latency`), or the three-way front of device FLOPs, bits per image and validation accuracy (`front`). Test accuracy
is never read."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from engine.latency import MEMORY_FIGURES, DeviceProfile, latency_table
from engine.pareto import DECISION_COLUMN

OBJECTIVES = {
    "latency": ("minimize",),  # modelled latency, constrained
    "front": ("minimize", "minimize", "maximize"),  # device FLOPs, bits per image, validation accuracy
}
BITS_COLUMN = "bits_actual"  # what goes on the wire
CONSTRAINTS = ("accuracy", "memory")  # the names of `constraints`' values


@dataclass(frozen=True)
class Environment:
    """An edge environment: the device, the server, the link rate (bits/s) and the one-way propagation delay."""

    device: DeviceProfile
    server: DeviceProfile
    rate_bps: float
    delay_s: float = 0.0

    def key(self) -> dict[str, Any]:
        """What identifies it (a study's name is derived from it)."""
        counted = [] if self.device.memory_figure == "model" else [self.device.memory_figure]
        return {"device": [self.device.name, self.device.flops_per_s, _finite(self.device.memory_bytes), *counted],
                "server": [self.server.name, self.server.flops_per_s, _finite(self.server.memory_bytes)],
                "rate_bps": self.rate_bps, "delay_s": self.delay_s}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def number(row: Mapping[str, Any], key: str) -> float:
    """A row's figure as a finite float; NaN where it is missing, not a number or not finite."""
    v = row.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def latency_of(row: Mapping[str, Any], env: Environment) -> dict[str, float]:
    """The row's latency terms in `env` (seconds) and whether its device part fits (`engine.latency`)."""
    lat = latencies_of([row], env).iloc[0]
    return {"latency": float(lat["latency"]), "t_device": float(lat["t_device"]),
            "t_transmit": float(lat["t_transmit"]), "t_server": float(lat["t_server"]),
            "feasible": bool(lat["feasible"])}


def latencies_of(rows: Sequence[Mapping[str, Any]], env: Environment) -> pd.DataFrame:
    """`latency_of` for many rows at once: a table with columns latency, t_device, t_transmit, t_server, feasible."""
    frame = pd.DataFrame([{k: row.get(k) for k in ("device_flops", "server_flops", *MEMORY_FIGURES.values(),
                                                   BITS_COLUMN)} for row in rows])
    return latency_table(frame, env.device, env.server, env.rate_bps, BITS_COLUMN, delay_s=env.delay_s)


def threshold_of(row: Mapping[str, Any], drop: float) -> float:
    """The least validation accuracy: the row's base model's validation accuracy minus `drop` (NaN if unknown)."""
    return number(row, "base_val_accuracy") - drop


def objective_values(row: Mapping[str, Any], env: Environment, objective: str) -> list[float]:
    """The values a trial reports for its row.

    Args:
        row: a measured results row; env: the environment; objective: a key of `OBJECTIVES`.
    Returns:
        [latency] or [device FLOPs, bits per image, validation accuracy]; a missing figure is +inf (or 0 accuracy),
        so that a row that cannot be judged is never best.
    """
    if objective == "latency":
        latency = latency_of(row, env)["latency"]
        return [latency if math.isfinite(latency) else math.inf]
    val = number(row, DECISION_COLUMN)
    flops, bits = number(row, "device_flops"), number(row, BITS_COLUMN)
    return [flops if math.isfinite(flops) else math.inf, bits if math.isfinite(bits) else math.inf,
            val if math.isfinite(val) else 0.0]


def constraints(row: Mapping[str, Any], env: Environment, drop: float) -> list[float]:
    """Optuna's constraint values of a row (each <= 0 when met): the threshold minus the validation accuracy, and
    the device part's memory over the device's, relative to it. A missing figure violates its constraint."""
    val, need = number(row, DECISION_COLUMN), threshold_of(row, drop)
    accuracy = need - val if math.isfinite(val) and math.isfinite(need) else 1.0
    memory = float(env.device.needs(pd.DataFrame([{k: row.get(k) for k in MEMORY_FIGURES.values()}])).iloc[0])
    cap = env.device.memory_bytes
    fits = 0.0 if not math.isfinite(cap) else ((memory - cap) / cap if math.isfinite(memory) else 1.0)
    return [float(accuracy), float(min(fits, 1e6))]


def feasible(values: list[float]) -> bool:
    """Whether every constraint value is met."""
    return all(v <= 0.0 for v in values)
