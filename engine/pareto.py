"""Pure functions on the results table: Pareto fronts, the best variant for an edge environment, latency against
link rate. The paper tunes split, sparsity and compression by brute force into a lookup table and picks the best
profiled model for each environment (Shao & Zhang 2020, Sec. "Case study", Fig. 4); these functions are that pick.

Empty tables, and tables with no feasible row, give empty results, never errors.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from engine.errors import UserError
from engine.latency import PROPAGATION_COLUMN, DeviceProfile, Overheads, latency_table, to_rate_bps

DECISION_COLUMN = "deployed_val_accuracy"  # a row's validation accuracy, measured as its test accuracy (`accuracy`) is
DEFAULT_ACCURACY_DROP = 0.02  # the dashboard's default drop below the base model's validation accuracy (2 points)
# validation accuracy a coding or a seed may win back over what its pruning's 8-bit row shows (half a point: a
# training seed alone moves a row about so much); rules that leave configurations out as expected to miss allow it
WIN_BACK = 0.005
# an accuracy exactly at the threshold meets it: a count of correct images stored as float32 (the base model's
# figures) and the same count as float64 differ in the eighth digit, so a threshold allows a ten-millionth below it
ACCURACY_EPS = 1e-7
NO_VALIDATION = "no validation figure: re-measure"
RATE_COLUMNS = ("rate", "method", "id", "split", "knobs", "latency", "t_device", "t_transmit", "t_server", "accuracy",
                DECISION_COLUMN, "bits")
_ORDER = ["latency", "device_flops", "id"]  # best first: lowest latency, then fewer device FLOPs, then id


def decision_accuracy(table: pd.DataFrame) -> pd.Series:
    """The accuracy every choice reads: each row's validation accuracy (`DECISION_COLUMN`, the held-out part of the
    training images, measured through the row's coding as its test accuracy is). The test accuracy (`accuracy`)
    only reports. NaN where a row has none (measured by an earlier release: re-measure it).

    Args:
        table: a results table.
    Returns:
        the validation accuracy of each row, as floats, on the table's index.
    """
    if DECISION_COLUMN not in table.columns:
        return pd.Series(np.nan, index=table.index, dtype="float64")
    return pd.to_numeric(table[DECISION_COLUMN], errors="coerce").astype("float64")


def decidable(table: pd.DataFrame, threshold: float | None) -> pd.Series:
    """True where a row may be chosen: it has a validation figure (rows without one are kept out of every choice
    until re-measured) and, with a `threshold`, that figure is at least it.

    Args:
        table: a results table; threshold: the least validation accuracy, or None for any accuracy.
    Returns:
        a boolean Series on the table's index.
    """
    val = decision_accuracy(table)
    ok = val.notna()
    return (ok & (val >= threshold)) if threshold is not None else ok


def validation_label(table: pd.DataFrame) -> pd.Series:
    """`NO_VALIDATION` for each row without a validation figure, "" for the others (what tables show beside it)."""
    return decision_accuracy(table).isna().map({True: NO_VALIDATION, False: ""}).astype(str)


def validation_threshold(table: pd.DataFrame, drop: float = DEFAULT_ACCURACY_DROP) -> float | None:
    """The least validation accuracy a variant needs: the base model's validation accuracy minus `drop`.

    Args:
        table: rows of one base model (their `base_val_accuracy`); drop: the allowed drop, a fraction.
    Returns:
        the threshold, or None when no row carries the base model's validation figure (rows of an earlier release).
    Raises:
        UserError: the rows hold more than one base model's validation figure, or `drop` is not in [0, 1].
    """
    if "base_val_accuracy" not in table.columns:
        return None
    values = pd.to_numeric(table["base_val_accuracy"], errors="coerce").dropna().unique()
    if len(values) > 1:
        raise UserError(f"the rows hold {len(values)} base models' validation accuracies; narrow them to one base "
                        "model (--profile or --base) or give the threshold")
    return None if len(values) == 0 else accuracy_threshold_default(float(values[0]), drop)


def pareto_front(table: pd.DataFrame, x: str, y: str, minimize: tuple[bool, bool] = (True, True)) -> pd.DataFrame:
    """The rows no other row dominates in (x, y), sorted by x then y, with their original index.

    A row dominates another if it is at least as good in both and strictly better in one, so rows equal in both
    coordinates do not dominate each other: all copies of a non-dominated point are kept. Rows with a missing x or
    y are left out."""
    if len(table) == 0:
        return table.copy()
    for col in (x, y):
        if col not in table.columns:
            raise UserError(f"no column {col!r} in the results table; choose one of: {', '.join(map(str, table))}")
    xs = pd.to_numeric(table[x], errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(table[y], errors="coerce").to_numpy(dtype=float)
    xk = xs if minimize[0] else -xs  # keys to minimise
    yk = ys if minimize[1] else -ys
    valid = np.flatnonzero(~(np.isnan(xk) | np.isnan(yk)))
    order = valid[np.lexsort((yk[valid], xk[valid]))]  # by x key, then y key
    keep: list[int] = []
    best_y = np.inf
    for i in order:  # every earlier row has x key <= this one's
        if yk[i] < best_y or (keep and xk[i] == xk[keep[-1]] and yk[i] == yk[keep[-1]]):
            keep.append(int(i))
            best_y = min(best_y, yk[i])
    front = table.iloc[keep]
    sort = np.lexsort((ys[keep], xs[keep])) if keep else np.arange(0)
    return front.iloc[sort]


def _candidate_order(table: pd.DataFrame, device: DeviceProfile | str, server: DeviceProfile | str,
                     rate_bps: float | str, threshold: float | None, bits_column: str,
                     overheads: Overheads | None = None, latencies: pd.DataFrame | None = None,
                     delay_s: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """The `latency_table` of these arguments (`latencies`, when the caller has it already) and the positions of its
    feasible rows whose validation accuracy meets the threshold (`decidable`), with a known latency, best first. The
    sort reorders the sort keys alone: a caller takes the rows it needs, not every column of every row twice."""
    lat = latency_table(table, device, server, rate_bps, bits_column, overheads, delay_s) \
        if latencies is None else latencies
    if len(lat) == 0:
        return lat, np.arange(0)
    missing = [c for c in ("id", "method") if c not in lat.columns]
    if missing:
        raise UserError(f"the results table lacks column(s) {', '.join(missing)}")
    ok = lat["feasible"] & lat["latency"].notna() & decidable(lat, threshold)
    positions = np.flatnonzero(ok.to_numpy(dtype=bool))
    keys = lat[_ORDER].iloc[positions].reset_index(drop=True)
    return lat, positions[keys.sort_values(_ORDER, kind="stable", na_position="last").index.to_numpy()]


def _candidates(table: pd.DataFrame, device: DeviceProfile | str, server: DeviceProfile | str,
                rate_bps: float | str, threshold: float | None, bits_column: str,
                overheads: Overheads | None = None, latencies: pd.DataFrame | None = None,
                delay_s: float = 0.0) -> pd.DataFrame:
    """Feasible rows whose validation accuracy meets the threshold (`decidable`), with a known latency, best first
    (from `latencies`, the `latency_table` of these arguments, when the caller has it already)."""
    lat, order = _candidate_order(table, device, server, rate_bps, threshold, bits_column, overheads, latencies,
                                  delay_s)
    return lat.iloc[order]


def best_variant(table: pd.DataFrame, device: DeviceProfile | str, server: DeviceProfile | str,
                 rate_bps: float | str, threshold: float | None, method: str | None = None,
                 bits_column: str = "bits_actual", overheads: Overheads | None = None,
                 delay_s: float = 0.0, latencies: pd.DataFrame | None = None) -> pd.Series | None:
    """The feasible row with validation accuracy >= `threshold` (None: any accuracy) and the lowest latency, of one
    method or of all; ties go to fewer device FLOPs, then the smaller id. None if no row qualifies. The row carries the
    latency columns of `latency_table` (with `overheads`, the measured deployment costs counted too; with `delay_s`,
    the one-way propagation delay in seconds). `latencies`: the `latency_table` of these same arguments, when the
    caller has computed it already."""
    if method is not None and len(table):
        if "method" not in table.columns:
            raise UserError("the results table has no method column")
        table = table[table["method"] == method]
        latencies = None if latencies is None else latencies[latencies["method"] == method]
    lat, order = _candidate_order(table, device, server, rate_bps, threshold, bits_column, overheads, latencies,
                                  delay_s)
    return None if len(order) == 0 else lat.iloc[order[0]]


def best_per_method(table: pd.DataFrame, device: DeviceProfile | str, server: DeviceProfile | str,
                    rate_bps: float | str, threshold: float | None,
                    bits_column: str = "bits_actual", overheads: Overheads | None = None,
                    latencies: pd.DataFrame | None = None, delay_s: float = 0.0) -> pd.DataFrame:
    """`best_variant` of each method that has a qualifying row, one row each, best (lowest latency) first.
    `latencies`: the `latency_table` of these same arguments, when the caller has computed it already."""
    best = _candidates(table, device, server, rate_bps, threshold, bits_column, overheads, latencies, delay_s)
    return best if best.empty else best.drop_duplicates("method", keep="first")


def latency_vs_rate(table: pd.DataFrame, device: DeviceProfile | str, server: DeviceProfile | str,
                    rates_bps: Iterable[float | str], threshold: float | None,
                    bits_column: str = "bits_actual", overheads: Overheads | None = None,
                    delay_s: float = 0.0) -> pd.DataFrame:
    """Each method's best qualifying variant at each link rate, as a tidy table (the paper's Fig. 4): columns
    rate (bits/s), method, id, split, knobs, latency, t_device, t_transmit, t_server, accuracy (test),
    deployed_val_accuracy (validation, which chose), bits; sorted by rate
    then method. A method with no qualifying variant has no rows (feasibility does not depend on the rate). With
    `overheads`, latency counts each row's measured coding time and the framing and runtime costs too; with
    `delay_s` > 0, the one-way propagation delay (and a t_propagation column)."""
    rates = [to_rate_bps(r) for r in rates_bps]
    base = _candidates(table, device, server, rates[0] if rates else 1.0, threshold, bits_column, overheads,
                       delay_s=delay_s)
    if base.empty or not rates:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in RATE_COLUMNS})
    n, m = len(base), len(rates)
    grid = base.iloc[np.tile(np.arange(n), m)].reset_index(drop=True)
    grid["rate"] = np.repeat(np.asarray(rates, dtype=float), n)
    grid["bits"] = pd.to_numeric(grid[bits_column], errors="coerce").astype("float64")
    grid["t_transmit"] = grid["bits"] / grid["rate"]
    grid["latency"] = grid["t_device"] + grid["t_transmit"] + grid["t_server"]
    if overheads is not None:
        grid["t_overhead"] = overheads.framing_bits / grid["rate"] + overheads.per_image_s
        grid["latency"] += grid["t_coding"] + grid["t_overhead"]
    if PROPAGATION_COLUMN in grid.columns:  # summed in `latency_table`'s order
        grid["latency"] += grid[PROPAGATION_COLUMN]
    for column in ("accuracy", DECISION_COLUMN):
        if column not in grid.columns:
            grid[column] = np.nan
    if "knobs" not in grid.columns:
        grid["knobs"] = [{}] * len(grid)
    grid = grid.sort_values(["rate", *_ORDER], kind="stable", na_position="last")
    best = grid.drop_duplicates(["rate", "method"], keep="first")
    best = best.sort_values(["rate", "method"], kind="stable").reset_index(drop=True)
    return best[[*RATE_COLUMNS, *([PROPAGATION_COLUMN] if PROPAGATION_COLUMN in best.columns else [])]]


def _dtype(column: str) -> str:
    return "object" if column in ("method", "id", "split", "knobs") else "float64"


def accuracy_threshold_default(base_accuracy: float, drop: float = DEFAULT_ACCURACY_DROP) -> float:
    """The accuracy a variant must keep: the base model's minus `drop` (fractions in [0, 1]). The paper's
    ResNet18 reaches about 95 % and it sets the threshold to 93 % (Shao & Zhang 2020, Sec. "Experiments"); here
    both are validation accuracies (`validation_threshold`). An accuracy a ten-millionth below it still meets it
    (`ACCURACY_EPS`: float32 and float64 figures of one count of images)."""
    if not 0.0 <= base_accuracy <= 1.0:
        raise UserError(f"base accuracy is a fraction in [0, 1], got {base_accuracy}; e.g. 0.95 for 95 %")
    if not 0.0 <= drop <= 1.0:
        raise UserError(f"the accuracy drop is a fraction in [0, 1], got {drop}; e.g. 0.02 for 2 points")
    return max(0.0, base_accuracy - drop - ACCURACY_EPS)



def meets_threshold(table: pd.DataFrame, threshold: float | None) -> pd.Series:
    """True where a row's validation accuracy is at least `threshold` (`decidable`); every row when `threshold` is
    None (an untrained profile's rows have no accuracy at all)."""
    if threshold is None:
        return pd.Series(True, index=table.index, dtype=bool)
    return decidable(table, threshold).astype(bool)


def _same(values: list) -> bool:
    """Whether the cells of one column are all equal (NaN equals NaN; dicts and lists compare by value)."""
    keys = []
    for v in values:
        if isinstance(v, float) and np.isnan(v) or v is None or v is pd.NA:
            keys.append(None)
        elif isinstance(v, (dict, list, tuple)):
            keys.append(repr(sorted(v.items())) if isinstance(v, dict) else repr(list(v)))
        else:
            keys.append(v)
    return all(k == keys[0] for k in keys[1:])


def compare_table(table: pd.DataFrame, ids: Iterable[str], columns: Iterable[str] | None = None) -> pd.DataFrame:
    """The rows `ids` (in that order, unknown ids left out) with only the columns whose values differ between them;
    each differing numeric column is followed by `Δ <column>`, its difference from the first row. Indexed by id.
    With fewer than two rows every column is kept (nothing to compare against)."""
    ids = [i for i in dict.fromkeys(ids) if "id" in table.columns and (table["id"] == i).any()]
    cols = [c for c in (columns if columns is not None else table.columns) if c in table.columns and c != "id"]
    rows = table.drop_duplicates("id").set_index("id").loc[ids, cols] if ids else table.iloc[:0][cols]
    if len(rows) < 2:
        return rows
    out = {}
    for c in cols:
        values = rows[c].tolist()
        if _same(values):
            continue
        out[c] = rows[c]
        numeric = pd.api.types.is_numeric_dtype(rows[c]) and not pd.api.types.is_bool_dtype(rows[c])
        if numeric:
            num = pd.to_numeric(rows[c], errors="coerce").astype("float64")
            out[f"Δ {c}"] = num - num.iloc[0]
    return pd.DataFrame(out, index=rows.index)
