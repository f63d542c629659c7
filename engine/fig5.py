"""The paper's noisy-channel comparison (Shao & Zhang 2020, Sec. "Performance of Learning-Driven JSCC over Noisy
Channels", Fig. 5): which variants a profile measures (`fig5_plan`, from the profile's `fig5` budget), running
them (`run_fig5`), and the figure as pure functions of the results table (`fig5_curves`, `best_schemes`,
`mismatch_curve`, `verdict`, `fig5_report`). Choices are made on validation accuracy; the test set only
reports."""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from engine.coding.channels import CHANNELS
from engine.coding.jscc import NOISELESS, JsccConfig
from engine.config import BaseModelConfig, VariantConfig
from engine.errors import UserError
from engine.profiles import PROFILES

if TYPE_CHECKING:
    from engine.methods import RunContext

FIG5_SPLIT = "conv4_x"  # the paper splits behind Conv_4x for Fig. 5
FIG5_CHANNELS = ("awgn", "bsc")
SCHEMES = ("JSCC", "learned source coding (actual)", "learned source coding (ideal)", "8-bit Huffman feature (actual)",
           "8-bit Huffman feature (ideal)", "PNG input")
# the separate schemes sent with their actual bitstream, and with their ideal (entropy-model) length; the PNG input
# has no entropy model, so its file stands in both
SEPARATE = {"actual": ("learned source coding (actual)", "8-bit Huffman feature (actual)", "PNG input"),
            "ideal": ("learned source coding (ideal)", "8-bit Huffman feature (ideal)", "PNG input")}
BANDWIDTH_HZ = 1e6  # Fig. 5a: W = 1 MHz


def fig5_variants(base: BaseModelConfig, profile: str, channels: Sequence[str] = FIG5_CHANNELS,
                  split: str = FIG5_SPLIT) -> list[VariantConfig]:
    """`three_step` variants without pruning (snapshot "none") at the split: the source-coding references, then
    one JSCC model per channel and number of uses, trained over the profile's whole condition range."""
    budget = PROFILES.get(profile).fig5
    common = {"epochs": budget.epochs, "train_images": budget.train_images, "realisations": budget.realisations,
              "server": budget.server, "batch_size": budget.batch_size}

    def make(jc: JsccConfig) -> VariantConfig:
        return VariantConfig.make("three_step", split, base, encoder="jscc", snapshot="none", **jc.knobs())

    out = [make(JsccConfig(NOISELESS, uses=d, bits=b, **common)) for d, b in budget.source]
    for ch in channels:
        grid = budget.conditions(ch)
        for k in budget.uses(ch):
            out.append(make(JsccConfig(ch, uses=k, condition=grid[len(grid) // 2], train_range=(min(grid), max(grid)),
                                       eval_conditions=grid, **common)))
    return out


def fig5_split(base: BaseModelConfig) -> str:
    """The split Fig. 5 compares at: conv4_x for the CIFAR ResNet18 (the paper's), the like for another model."""
    from engine.models import reference_split

    split = reference_split(base.model)
    if split is None:
        raise UserError(f"model {base.model} names no split points: choose one with --splits")
    return split


def fig5_plan(base: BaseModelConfig, profile: str, channels: Sequence[str] = FIG5_CHANNELS,
              split: str | None = None) -> list[VariantConfig]:
    """What Fig. 5 of a profile measures: the `original` 8-bit Huffman row at the split (`fig5_split` by default),
    then `fig5_variants`."""
    split = split or fig5_split(base)
    return [VariantConfig.make("original", split, base, bits=8), *fig5_variants(base, profile, channels, split)]


def run_fig5(ctx: RunContext, base: BaseModelConfig, channels: Sequence[str] = FIG5_CHANNELS,
             skip: Container[str] = (), on_row: Callable[[dict[str, Any]], None] | None = None,
             split: str | None = None) -> list[dict[str, Any]]:
    """Measure the variants of `fig5_plan` (at `split`, `fig5_split` by default) whose id is not in `skip` (e.g. a
    ResultsStore); `on_row(row)` is called as each row is ready (to store it). Returns the new rows."""
    from engine.methods import METHODS

    todo = [cfg for cfg in fig5_plan(base, ctx.profile.budget_name, channels, split) if cfg.id not in skip]
    outer, rows = ctx.progress, []
    try:
        for i, cfg in enumerate(todo):
            name = f"{cfg.knob('jscc_channel', cfg.method)} {cfg.knob('jscc_uses', '')}".strip()
            if outer is not None:
                ctx.progress = lambda f, m, i=i, name=name: outer((i + min(max(f, 0.0), 1.0)) / len(todo),
                                                                  f"{i + 1}/{len(todo)} {name}: {m}")
                outer(i / len(todo), f"{i + 1}/{len(todo)} {name}")
            row = METHODS.get(cfg.method).run(cfg, ctx)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        ctx.progress = outer
    return rows


def _knob(table: pd.DataFrame, name: str) -> pd.Series:
    col = f"knob_{name}"
    return table[col] if col in table.columns else pd.Series([None] * len(table), index=table.index, dtype=object)


def _numeric(row: pd.Series, name: str) -> float:
    value = row.get(name) if name in row else None
    try:
        return float(value) if value is not None and pd.notna(value) else math.nan
    except (TypeError, ValueError):
        return math.nan


def fig5_rows(table: pd.DataFrame, split: str | None = None) -> pd.DataFrame:
    """The rows Fig. 5 reads: unpruned `three_step` "jscc" rows at the split, and `original` at the split (by
    default the split of most of those JSCC rows, conv4_x when there are none)."""
    if table.empty or "method" not in table.columns:
        return table
    jscc = (table["method"] == "three_step") & (_knob(table, "encoder") == "jscc") & (_knob(table, "snapshot") ==
                                                                                    "none")
    if split is None:
        split = table.loc[jscc, "split"].mode().iloc[0] if jscc.any() else FIG5_SPLIT
    at = table["split"] == split
    return table[at & (jscc | (table["method"] == "original"))]


def thresholds(table: pd.DataFrame, drop: float = 0.02) -> tuple[float, float]:
    """(validation threshold, test threshold): the base model's validation and test accuracy minus `drop`."""
    rows = fig5_rows(table)
    val = pd.to_numeric(rows.get("base_val_accuracy", pd.Series(dtype=float)), errors="coerce").dropna()
    test = pd.to_numeric(rows.get("base_test_accuracy", pd.Series(dtype=float)), errors="coerce").dropna()
    return (float(val.iloc[0]) - drop if len(val) else math.nan, float(test.iloc[0]) - drop if len(test) else math.nan)


CURVE_COLUMNS = ("channel", "condition", "scheme", "uses", "bits", "cost", "accuracy", "accuracy_std",
                 "val_accuracy", "meets", "id")


def fig5_curves(table: pd.DataFrame, channel: str, drop: float = 0.02, bandwidth_hz: float = BANDWIDTH_HZ,
                conditions: Sequence[float] | None = None) -> pd.DataFrame:
    """Fig. 5 as a tidy table, one row per (condition, scheme): for JSCC, the smallest number of channel uses
    whose validation accuracy (mean over realisations at that condition) is at least the base's validation accuracy
    minus `drop`; for learned source coding, the reference meeting the same threshold with the fewest bits, twice:
    by its actual bitstream ("(actual)") and by its ideal, entropy-model length ("(ideal)"); the 8-bit Huffman
    feature (`original`) likewise, and the PNG input; every separate scheme sent at capacity.
    `cost` is the communication latency in seconds at `bandwidth_hz` (AWGN: k/W, or B / (W log2(1+SNR))) or the
    channel bits (BSC: n, or B / (1 - H2(p))); `uses` is channel uses (JSCC), `bits` source bits (separate coding).
    A scheme with no qualifying variant at a condition has no row there."""
    cls = CHANNELS.get(channel)
    rows = fig5_rows(table)
    if rows.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in CURVE_COLUMNS})
    val_need, test_need = thresholds(table, drop)
    jscc = rows[_knob(rows, "jscc_channel") == channel]
    if conditions is None:
        conditions = sorted({float(c) for cs in jscc.get("curve_conditions", pd.Series(dtype=object)).dropna()
                             for c in cs})

    def cost_of_uses(uses: float) -> float:
        return uses / bandwidth_hz if channel == "awgn" else uses * cls.reals_per_use

    def separate(c: float, scheme: str, bits: float, accuracy: float, val: float, row_id: Any) -> dict[str, Any]:
        uses = bits / cls.capacity(c) if cls.capacity(c) > 0 else math.inf
        return {"scheme": scheme, "condition": c, "bits": bits, "uses": uses,
                "cost": cost_of_uses(uses) if cls.capacity(c) > 0 else math.inf, "accuracy": accuracy,
                "accuracy_std": 0.0, "val_accuracy": val, "id": row_id}

    references = _separate_references(rows, val_need)
    out: list[dict[str, Any]] = []
    for c in conditions:
        if (found := _fewest_uses(jscc, c, val_need)) is not None:
            uses, r, j = found
            out.append({"scheme": "JSCC", "condition": c, "uses": uses, "bits": math.nan, "cost": cost_of_uses(uses),
                        "accuracy": r["curve_accuracy"][j], "accuracy_std": r["curve_accuracy_std"][j],
                        "val_accuracy": r["curve_val_accuracy"][j], "id": r["id"]})
        out.extend(separate(c, *ref) for ref in references)
    frame = pd.DataFrame(out, columns=[c for c in CURVE_COLUMNS if c not in ("channel", "meets")])
    frame.insert(0, "channel", channel)
    frame["meets"] = frame["accuracy"] >= test_need
    order = {s: i for i, s in enumerate(SCHEMES)}
    frame = frame.sort_values(["condition", "scheme"], key=lambda s: s.map(order) if s.name == "scheme" else s)
    return frame[list(CURVE_COLUMNS)].reset_index(drop=True)


def _separate_references(rows: pd.DataFrame, val_need: float) -> list[tuple[str, float, float, float, Any]]:
    """(scheme, source bits, test accuracy, validation accuracy, id) of each separate scheme: the learned
    source-coding reference meeting `val_need` with the fewest actual bits, and the one with the fewest ideal bits;
    the 8-bit Huffman feature's actual and ideal bits; the PNG input."""
    source = rows[_knob(rows, "jscc_channel") == NOISELESS]
    source = (source[pd.to_numeric(source["val_accuracy"], errors="coerce") >= val_need]
              if "val_accuracy" in source.columns else source.iloc[:0])
    out = []
    for length in ("actual", "ideal"):
        if (best := _fewest_bits(source, f"bits_{length}")) is not None:
            out.append((f"learned source coding ({length})", float(best[f"bits_{length}"]), float(best["accuracy"]),
                        float(best["val_accuracy"]), best["id"]))
    original = rows[rows["method"] == "original"]
    for length in ("actual", "ideal") if len(original) else ():
        huffman = original.iloc[0]
        if not math.isnan(bits := _numeric(huffman, f"bits_{length}")):
            out.append((f"8-bit Huffman feature ({length})", bits, float(huffman["accuracy"]), math.nan,
                        huffman["id"]))
    if not math.isnan(png := _numeric(rows.iloc[0], "png_bits")):
        out.append(("PNG input", png, _numeric(rows.iloc[0], "base_test_accuracy"), math.nan, None))
    return out


def _fewest_bits(source: pd.DataFrame, column: str) -> pd.Series | None:
    """The row of `source` with the fewest `column` bits (ties: the smaller id); None when none has a figure."""
    if column not in source.columns:
        return None
    known = source.assign(_bits=pd.to_numeric(source[column], errors="coerce")).dropna(subset=["_bits"])
    return known.sort_values(["_bits", "id"]).iloc[0] if len(known) else None


def _fewest_uses(jscc: pd.DataFrame, condition: float, val_need: float) -> tuple[float, pd.Series, int] | None:
    """The JSCC row with the fewest channel uses (ties: the smaller id) whose validation accuracy at `condition`
    meets `val_need`: (uses, row, the condition's index in its curve); None when none does."""
    candidates = []
    for _, r in jscc.iterrows():
        cs = [float(v) for v in (r.get("curve_conditions") or [])]
        if condition in cs and r["curve_val_accuracy"][j := cs.index(condition)] >= val_need:
            candidates.append((float(r["knob_jscc_uses"]), r["id"], r, j))
    if not candidates:
        return None
    uses, _, r, j = min(candidates, key=lambda t: (t[0], t[1]))
    return uses, r, j


def best_schemes(curves: pd.DataFrame, ideal: bool = False) -> pd.DataFrame:
    """The cheapest scheme at each condition of `fig5_curves` (ties: the order of SCHEMES).

    Args:
        curves: one channel's `fig5_curves` table.
        ideal: also rank the separate schemes' ideal (entropy-model) lengths; by default only what is sent.

    Returns:
        One row of `curves` per condition.
    """
    if not ideal:
        curves = curves[~curves["scheme"].isin(set(SEPARATE["ideal"]) - set(SEPARATE["actual"]))]
    if curves.empty:
        return curves
    order = {s: i for i, s in enumerate(SCHEMES)}
    ranked = curves.assign(_rank=curves["scheme"].map(order)).sort_values(["condition", "cost", "_rank"])
    return ranked.drop_duplicates("condition").drop(columns="_rank").reset_index(drop=True)


def _condition_text(channel: str, condition: float) -> str:
    """A condition as a reader says it: "10 dB SNR", "p = 0.1"."""
    return f"{condition:g} dB SNR" if channel == "awgn" else f"{CHANNELS.get(channel).condition_name} = {condition:g}"


def _cost_text(channel: str, cost: float) -> str:
    """A cost in its unit: AWGN latency in µs, ms or s; otherwise channel bits."""
    def number(v: float) -> str:
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"

    if channel != "awgn":
        return f"{number(cost)} channel bits"
    scale, unit = next(((f, u) for f, u in ((1e6, "µs"), (1e3, "ms")) if cost * f < 1000), (1.0, "s"))
    return f"{number(cost * scale)} {unit}"


def _best_separate(here: pd.DataFrame, length: str) -> pd.Series | None:
    """The cheapest separate scheme of one condition's curves with `length` ("actual" or "ideal") source bits."""
    rows = here[here["scheme"].isin(SEPARATE[length])]
    return rows.sort_values("cost", kind="stable").iloc[0] if len(rows) else None


def _against(jscc_cost: float, best: pd.Series, channel: str) -> tuple[bool, str]:
    """(whether JSCC costs more, "is cheaper than <scheme> at <cost> (<JSCC's cost over it>x)")."""
    ratio = jscc_cost / best["cost"] if best["cost"] > 0 else math.inf
    verb = "is cheaper than" if ratio < 1 else "is as cheap as" if ratio == 1 else "costs more than"
    return ratio > 1, f"{verb} {{}}, {best['scheme']} at {_cost_text(channel, best['cost'])} ({ratio:.3g}x)"


def _condition_verdict(here: pd.DataFrame, channel: str, condition: float) -> tuple[str, str]:
    """One condition's verdict: (kind, sentence); kind is "wins", "wins on actual", "wins on ideal", "loses",
    "no JSCC" or "nothing to compare"."""
    at, cls = _condition_text(channel, condition), CHANNELS.get(channel)
    jscc = here[here["scheme"] == "JSCC"]
    actual, ideal = _best_separate(here, "actual"), _best_separate(here, "ideal")
    if jscc.empty:
        cheapest = ("" if actual is None else
                    f"; the cheapest separate scheme is {actual['scheme']} at {_cost_text(channel, actual['cost'])}")
        return "no JSCC", f"At {at} no JSCC model meets the validation threshold{cheapest}."
    j = jscc.iloc[0]
    uses, cost = f"{j['uses']:g} {cls.use_label}", _cost_text(channel, j["cost"])
    head = f"At {at}, JSCC ({uses}{'' if cost == uses else ': ' + cost})"
    if actual is None or ideal is None:
        return "nothing to compare", f"{head} has no separate scheme to compare with."
    (loses_act, act), (loses_ide, ide) = _against(j["cost"], actual, channel), _against(j["cost"], ideal, channel)
    joint = "and" if loses_act == loses_ide else "but"
    sentence = (f"{head} {act.format('the best separate scheme sent with its actual bitstream')}, {joint} "
                f"{ide.format('the best with its ideal length')}.")
    kind = {(False, False): "wins", (False, True): "wins on actual", (True, False): "wins on ideal"}
    return kind.get((loses_act, loses_ide), "loses"), sentence


def verdict(curves: pd.DataFrame) -> list[str]:
    """Where JSCC wins and where it loses on one channel: at each condition, JSCC's cost against the cheapest
    separate scheme sent at capacity with its actual bitstream and with its ideal (entropy-model) length, by how
    much (JSCC's cost over it), after a sentence that sums the conditions up. Built from the numbers of `curves`.

    Args:
        curves: one channel's `fig5_curves` table.

    Returns:
        The sentences, the summary first; empty without rows.
    """
    if curves.empty:
        return []
    channel = str(curves["channel"].iloc[0])
    found = [(c, *_condition_verdict(curves[curves["condition"] == c], channel, c))
             for c in sorted(curves["condition"].unique())]
    phrases = {"wins": "is at or below every separate scheme, actual and ideal, at",
               "wins on actual": "is at or below the best actual bitstream but above the best ideal length at",
               "wins on ideal": "is at or below the best ideal length but above the best actual bitstream at",
               "loses": "costs more than the best separate scheme, actual and ideal, at",
               "no JSCC": "has no model meeting the validation threshold at"}
    parts = [f"{text} {_join([_condition_text(channel, c) for c, k, _ in found if k == kind])}"
             for kind, text in phrases.items() if any(k == kind for _, k, _ in found)]
    summary = f"{channel.upper()}: " + (f"JSCC {'; '.join(parts)}." if parts else "nothing to compare.")
    return [summary, *(sentence for _, _, sentence in found)]


def _join(items: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def mismatch_curve(table: pd.DataFrame, row_id: str) -> pd.DataFrame:
    """Accuracy of one JSCC row at every condition it was evaluated at (test mean and std over realisations,
    validation mean): how a model trained for some conditions fares at others."""
    hit = table[table["id"] == row_id]
    if hit.empty or not isinstance(hit.iloc[0].get("curve_conditions"), list):
        return pd.DataFrame({c: pd.Series(dtype=float) for c in ("condition", "accuracy", "accuracy_std",
                                                                  "val_accuracy")})
    r = hit.iloc[0]
    return pd.DataFrame({"condition": r["curve_conditions"], "accuracy": r["curve_accuracy"],
                         "accuracy_std": r["curve_accuracy_std"], "val_accuracy": r["curve_val_accuracy"]})


def jscc_summary(table: pd.DataFrame, channel: str) -> pd.DataFrame:
    """Each JSCC model of a channel at each evaluated condition: uses, test accuracy (mean, std), validation
    accuracy; a wide view of the mismatch curves for reports."""
    rows = fig5_rows(table)
    rows = rows[_knob(rows, "jscc_channel") == channel]
    out = []
    for _, r in rows.iterrows():
        for c, acc, std, val in zip(r["curve_conditions"], r["curve_accuracy"], r["curve_accuracy_std"],
                                    r["curve_val_accuracy"], strict=True):
            out.append({"uses": int(r["knob_jscc_uses"]), "condition": c, "accuracy": acc, "accuracy_std": std,
                        "val_accuracy": val, "id": r["id"]})
    return pd.DataFrame(out, columns=["uses", "condition", "accuracy", "accuracy_std", "val_accuracy", "id"])


def fig5_report(table: pd.DataFrame, channels: Sequence[str] = FIG5_CHANNELS, drop: float = 0.02,
                bandwidth_hz: float = BANDWIDTH_HZ) -> str:
    """Fig. 5 as text: the source-coding references, then per channel each scheme's cost and choice at each
    condition, the JSCC models' accuracy at every condition (mismatch curves) and `verdict`: where JSCC wins and
    where it loses against separate coding at capacity, with actual bitstreams and with ideal lengths.

    Args:
        table: the results table.
        channels: the channels to report.
        drop: accuracy drop allowed below the base model (a fraction).
        bandwidth_hz: AWGN channel uses per second.

    Returns:
        The report's lines joined.
    """
    val_need, test_need = thresholds(table, drop)
    lines = [f"accuracy threshold: validation {val_need:.2%} (choices), test {test_need:.2%} (reported); "
             f"base model minus {drop * 100:g} points"]
    rows = fig5_rows(table)
    source = rows[_knob(rows, "jscc_channel") == NOISELESS]
    if len(source):
        lines.append("\nlearned source coding references (noiseless; mean actual bitstream and ideal length):")
        ref = pd.DataFrame({"d": _knob(source, "jscc_uses"), "bits/dim": _knob(source, "jscc_bits"),
                            "bits_actual": source["bits_actual"], "bits_ideal": source["bits_ideal"],
                            "val_acc": source["val_accuracy"], "test_acc": source["accuracy"], "id": source["id"]})
        lines.append(ref.sort_values("bits_actual").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for ch in channels:
        cls = CHANNELS.get(ch)
        curves = fig5_curves(table, ch, drop, bandwidth_hz)
        unit = "latency (ms), W = %g MHz" % (bandwidth_hz / 1e6) if ch == "awgn" else "channel bits"
        lines.append(f"\n{ch.upper()}: {unit} per scheme vs {cls.condition_label} "
                     "(JSCC: smallest uses meeting the validation threshold; others at capacity, with their actual "
                     "bitstream and their ideal length)")
        if curves.empty:
            lines.append("  no rows: run `python -m engine noisy`")
            continue
        scale = 1e3 if ch == "awgn" else 1.0
        wide = curves.assign(cost=curves["cost"] * scale).pivot_table(index="condition", columns="scheme",
                                                                      values="cost", aggfunc="first")
        wide = wide[[s for s in SCHEMES if s in wide.columns]]
        jscc = curves[curves["scheme"] == "JSCC"].set_index("condition")
        wide["JSCC uses"] = jscc["uses"]
        wide["JSCC test acc"] = jscc["accuracy"]
        lines.append(wide.T.rename_axis(index=None, columns=cls.condition_name).to_string(
            float_format=lambda v: f"{v:.4g}"))
        summary = jscc_summary(table, ch)
        if len(summary):
            lines.append(f"JSCC test accuracy (mean over realisations) by {cls.use_label} and {cls.condition_name}:")
            grid = summary.pivot_table(index="uses", columns="condition", values="accuracy")
            lines.append(grid.to_string(float_format=lambda v: f"{v:.2%}"))
        lines.extend(verdict(curves))
    return "\n".join(lines)
