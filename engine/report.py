"""Pure functions that turn the results table into the paper's comparisons (Shao & Zhang 2020, Fig. 3 and the text
around it): each method's best variant per split under the accuracy threshold, and whether the `three_step` curve
is dominated by a baseline in the communication-computation plane.

"Best" at a split is the fewest bits per image among the rows whose validation accuracy meets the threshold (ties:
fewer device FLOPs, then the smaller id); the test accuracy is shown beside it, never chosen on. A point dominates
another when it needs no more device FLOPs and no more bits, and strictly less of one.
Empty tables give empty results."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from engine.errors import UserError
from engine.pareto import DECISION_COLUMN, decidable, decision_accuracy

BEST_COLUMNS = ("split", "method", "id", "accuracy", DECISION_COLUMN, "device_flops", "bits")


def _require(table: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f"the results table lacks column(s) {', '.join(missing)}; profile the variants first")


def qualifying(table: pd.DataFrame, threshold: float | None, bits_column: str = "bits_actual") -> pd.DataFrame:
    """Rows with a validation accuracy >= `threshold` (None: any; rows without one never qualify) and known FLOPs
    and bits, with a `bits` column."""
    if table.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in BEST_COLUMNS})
    _require(table, ("id", "method", "split", "accuracy", "device_flops", bits_column))
    out = table.copy().assign(bits=pd.to_numeric(table[bits_column], errors="coerce"),
                              device_flops=pd.to_numeric(table["device_flops"], errors="coerce"),
                              accuracy=pd.to_numeric(table["accuracy"], errors="coerce"),
                              **{DECISION_COLUMN: decision_accuracy(table)})
    ok = out["bits"].notna() & out["device_flops"].notna() & decidable(out, threshold)
    return out[ok]


def best_per_split(table: pd.DataFrame, threshold: float | None, bits_column: str = "bits_actual") -> pd.DataFrame:
    """Each (split, method)'s qualifying row with the fewest bits, as a tidy table (BEST_COLUMNS), sorted by split
    order of appearance then method."""
    rows = qualifying(table, threshold, bits_column)
    if rows.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in BEST_COLUMNS})
    order = {s: i for i, s in enumerate(dict.fromkeys(table["split"]))}
    best = rows.sort_values(["bits", "device_flops", "id"], kind="stable").drop_duplicates(["split", "method"])
    best = best.assign(_order=best["split"].map(order)).sort_values(["_order", "method"], kind="stable")
    return best[list(BEST_COLUMNS)].reset_index(drop=True)


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether point a = (flops, bits) dominates point b: no worse in both, strictly better in one."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def provably_dominated(flops_bound: float, bits_bound: float, points: Iterable[tuple[float, float]]) -> bool:
    """Whether a variant not yet measured is dominated whatever its outcome: one of `points` (device FLOPs, bits of
    measured rows that meet the threshold) dominates its lower bounds. Its accuracy cannot rescue it: that row
    already meets the threshold with no more FLOPs and no more bits, and strictly less of one.

    Args:
        flops_bound, bits_bound: lower bounds on the variant's device FLOPs and bits per image.
        points: (device FLOPs, bits per image) of measured rows that meet the threshold.
    Returns:
        True when one of `points` dominates every outcome of the variant.
    """
    return any(dominates(p, (flops_bound, bits_bound)) for p in points)


def composed(table: pd.DataFrame) -> pd.Series:
    """Rows of `three_step` variants that are both pruned (a snapshot level >= 0) and coded otherwise than 8-bit +
    Huffman: the paper's three steps together."""
    def one(row: pd.Series) -> bool:
        knobs = row.get("knobs") if isinstance(row.get("knobs"), dict) else {}
        level = pd.to_numeric(pd.Series([row.get("level")]), errors="coerce").iloc[0]
        coded = knobs.get("encoder", "none") != "none" or knobs.get("bits", 8) != 8
        return row["method"] == "three_step" and pd.notna(level) and level >= 0 and coded

    return table.apply(one, axis=1).astype(bool) if not table.empty else pd.Series(dtype=bool)


def composed_against_baselines(table: pd.DataFrame, threshold: float | None, method: str = "three_step",
                               bits_column: str = "bits_actual") -> pd.DataFrame:
    """Per split where `method` has rows: of its qualifying pruned-and-coded rows (`composed`), the one that
    dominates the most qualifying rows of the other methods at that split (ties: fewest bits, then FLOPs), how many
    it dominates out of how many, and each rival it does not dominate with the coordinate it loses on.

    Args:
        table: the results rows; threshold: the validation accuracy a row needs.
    Returns:
        columns split, id, bits, device_flops, accuracy, deployed_val_accuracy, dominated, rivals, not_dominated
        (text; "no pruned and coded row meets the threshold" where there is none).
    """
    columns = ["split", "id", "bits", "device_flops", "accuracy", DECISION_COLUMN, "dominated", "rivals",
               "not_dominated"]
    rows = qualifying(table, threshold, bits_column)
    out = []
    tried = [s for s in dict.fromkeys(table["split"]) if (table["split"] == s).any()
             and ((table["split"] == s) & (table["method"] == method)).any()] if not table.empty else []
    for s in tried:
        at = rows[rows["split"] == s]
        mine = at[(at["method"] == method) & composed(at)] if not at.empty else at
        rivals = at[at["method"] != method] if not at.empty else at
        if mine.empty:
            out.append({"split": s, "id": None, "bits": np.nan, "device_flops": np.nan, "accuracy": np.nan,
                        DECISION_COLUMN: np.nan, "dominated": 0, "rivals": len(rivals),
                        "not_dominated": "no pruned and coded row meets the threshold"})
            continue
        score = [sum(dominates((m["device_flops"], m["bits"]), (r["device_flops"], r["bits"]))
                     for _, r in rivals.iterrows()) for _, m in mine.iterrows()]
        best = mine.assign(_score=score).sort_values(["_score", "bits", "device_flops", "id"],
                                                     ascending=[False, True, True, True], kind="stable").iloc[0]
        missed = [f"{r['method']} ({r['device_flops'] / 1e6:.2f} MFLOPs, {r['bits']:,.1f} bits: "
                  + ("fewer FLOPs" if r["device_flops"] < best["device_flops"] else "fewer bits") + ")"
                  for _, r in rivals.iterrows()
                  if not dominates((best["device_flops"], best["bits"]), (r["device_flops"], r["bits"]))]
        out.append({"split": s, "id": best["id"], "bits": best["bits"], "device_flops": best["device_flops"],
                    "accuracy": best["accuracy"], DECISION_COLUMN: best[DECISION_COLUMN],
                    "dominated": int(best["_score"]), "rivals": len(rivals), "not_dominated": "; ".join(missed)})
    return pd.DataFrame(out, columns=columns)


def dominated_points(table: pd.DataFrame, threshold: float | None, method: str = "three_step",
                     bits_column: str = "bits_actual") -> pd.DataFrame:
    """Every qualifying `method` row that some other method's qualifying row dominates in (device FLOPs, bits), with
    the dominating row: columns split, id, device_flops, bits, by_method, by_id, by_split, by_device_flops, by_bits.
    Empty when the method's curve is nowhere dominated (the paper's claim)."""
    rows = qualifying(table, threshold, bits_column)
    mine, others = rows[rows["method"] == method], rows[rows["method"] != method]
    out = []
    if not mine.empty and not others.empty:
        of = others["device_flops"].to_numpy(float)
        ob = others["bits"].to_numpy(float)
        for _, r in mine.iterrows():
            better = (of <= r["device_flops"]) & (ob <= r["bits"]) & ((of < r["device_flops"]) | (ob < r["bits"]))
            if better.any():
                # the dominating row closest in bits, so the report names the most telling one
                i = int(np.flatnonzero(better)[np.argmin(ob[better])])
                o = others.iloc[i]
                out.append({"split": r["split"], "id": r["id"], "device_flops": r["device_flops"], "bits": r["bits"],
                            "by_method": o["method"], "by_id": o["id"], "by_split": o["split"],
                            "by_device_flops": o["device_flops"], "by_bits": o["bits"]})
    columns = ["split", "id", "device_flops", "bits", "by_method", "by_id", "by_split", "by_device_flops", "by_bits"]
    return pd.DataFrame(out, columns=columns)


def claim_by_split(table: pd.DataFrame, threshold: float | None, method: str = "three_step",
                   bits_column: str = "bits_actual") -> pd.DataFrame:
    """Per split: the `method`'s best qualifying row (fewest bits) and whether another method's qualifying row at the
    same split dominates it (columns split, bits, device_flops, accuracy, deployed_val_accuracy, holds,
    dominated_by), at each split where the method has rows; a split where none of them meets the threshold says so
    (holds None)."""
    best = best_per_split(table, threshold, bits_column)
    out = []
    tried = set(table["split"][table["method"] == method]) if not table.empty else set()
    for s in [s for s in dict.fromkeys(table["split"]) if s in tried] if tried else []:
        mine = best[(best["split"] == s) & (best["method"] == method)]
        if mine.empty:
            out.append({"split": s, "bits": np.nan, "device_flops": np.nan, "accuracy": np.nan,
                        DECISION_COLUMN: np.nan, "holds": None,
                        "dominated_by": f"no {method} row meets the threshold"})
            continue
        m = mine.iloc[0]
        rows = qualifying(table[table["split"] == s], threshold, bits_column)
        rivals = rows[rows["method"] != method]
        beaten = [f"{o['method']} ({o['device_flops'] / 1e6:.2f} MFLOPs, {o['bits']:,.1f} bits)"
                  for _, o in rivals.iterrows() if dominates((o["device_flops"], o["bits"]),
                                                             (m["device_flops"], m["bits"]))]
        out.append({"split": s, "bits": m["bits"], "device_flops": m["device_flops"], "accuracy": m["accuracy"],
                    DECISION_COLUMN: m[DECISION_COLUMN], "holds": not beaten, "dominated_by": "; ".join(beaten)})
    return pd.DataFrame(out, columns=["split", "bits", "device_flops", "accuracy", DECISION_COLUMN, "holds",
                                      "dominated_by"])


def latency_growth(curves: pd.DataFrame, poor_bps: float, good_bps: float) -> pd.DataFrame:
    """What the paper's Fig. 4 text claims, in numbers: each method's worst latency at link rates up to `poor_bps`
    (its "around 0.1 s below 40 kB/s") and how much its latency grows from `good_bps` down to the lowest rate (the
    baselines' "increase dramatically").

    Args:
        curves: a `latency_vs_rate` table (method, rate, latency), each method's best variant per rate.
        poor_bps: the highest rate counted as poor (the paper: 40 kB/s); good_bps: the reference rate.
    Returns:
        per method: worst_poor_s (the most latency at a rate <= poor_bps), lowest_rate, at_lowest_s, at_good_s and
        growth (at_lowest_s / at_good_s); a method without a row at good_bps has growth NaN.
    """
    columns = ["method", "worst_poor_s", "lowest_rate", "at_lowest_s", "at_good_s", "growth"]
    if curves.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for method, rows in curves.groupby("method", sort=True):
        by_rate = rows.set_index("rate")["latency"].sort_index()
        poor = by_rate[by_rate.index <= poor_bps]
        lowest = by_rate.index[0]
        good = float(by_rate[good_bps]) if good_bps in by_rate.index else np.nan
        out.append({"method": method, "worst_poor_s": float(poor.max()) if len(poor) else np.nan,
                    "lowest_rate": float(lowest), "at_lowest_s": float(by_rate.iloc[0]), "at_good_s": good,
                    "growth": float(by_rate.iloc[0]) / good if good > 0 else np.nan})
    return pd.DataFrame(out, columns=columns)


REPLICATE_COLUMNS = (DECISION_COLUMN, "accuracy", "bits_actual")


def replicate_spread(rows: Iterable[dict], variant_id: str) -> dict[str, float | int | list[str]] | None:
    """Mean and spread of a configuration over its training seeds: the rows that differ from `variant_id`'s only by
    the `replicate` knob (`VariantConfig.replicate`), the row itself included.

    Args:
        rows: results rows (each with id, method, split, base_id, knobs).
        variant_id: one of the configuration's rows.
    Returns:
        n, ids, and for validation accuracy, test accuracy and actual bits the mean, the sample standard deviation
        (0 for one row) and the range (`{column}_mean`, `_std`, `_min`, `_max`); None when `variant_id` is absent.
    """
    from engine.config import REPLICATE_KNOB

    rows = list(rows)

    def key(r: dict) -> tuple:
        knobs = {k: v for k, v in (r.get("knobs") or {}).items() if k != REPLICATE_KNOB}
        return r.get("method"), r.get("split"), r.get("base_id"), sorted(knobs.items(), key=lambda kv: kv[0])

    me = next((r for r in rows if r.get("id") == variant_id), None)
    if me is None:
        return None
    same = [r for r in rows if key(r) == key(me)]
    out: dict[str, float | int | list[str]] = {"n": len(same), "ids": sorted(str(r["id"]) for r in same)}
    for column in REPLICATE_COLUMNS:
        values = np.array([float(r[column]) for r in same if isinstance(r.get(column), int | float)], dtype=float)
        if len(values):
            out.update({f"{column}_mean": float(values.mean()),
                        f"{column}_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                        f"{column}_min": float(values.min()), f"{column}_max": float(values.max())})
    return out
