"""The trade-off figures of a profile, from the rows in the results store (run the sweep first:
`python -m engine sweep --profile quick`): pruning at each split (device FLOPs, memory, measured CPU time, bits and
accuracy per sparsity, `three_step` against `two_step_pruning`, the base beside them), every method's best variant per
split at validation accuracy >= base - 2 points (test accuracy beside it) with the paper's dominance claim checked,
and Figure 4 (each method's best latency at 10, 40, 100 and 1000 kB/s on the Raspberry Pi 3 / RTX 2080 Ti presets,
a device part's memory counted from the model or from its measured process, and the paper's text about it checked).
Run: python bench/bench_tradeoff.py [--profile quick] [--data PATH] [--drop 0.02] [--memory model|torchscript|onnx]"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402

from bench.common import DEFAULT_DATA, profile_data  # noqa: E402
from engine.coding.learned import EncodingConfig  # noqa: E402
from engine.latency import DEVICES, MEMORY_FIGURES, DeviceProfile  # noqa: E402
from engine.methods.three_step import RUN_KNOBS, full_run  # noqa: E402
from engine.pareto import DECISION_COLUMN, latency_vs_rate, validation_threshold  # noqa: E402
from engine.profiles import PROFILES, Profile  # noqa: E402
from engine.report import (  # noqa: E402
    claim_by_split,
    composed_against_baselines,
    dominated_points,
    latency_growth,
    qualifying,
)
from engine.store import ResultsStore  # noqa: E402

RATES_KBPS = (10, 40, 100, 1000)
POOR_KBPS, GOOD_KBPS = 40, 100  # the paper's "poor communication" bound, and the rate its growth is read from
PI3 = DEVICES.get("pi3")
CODINGS = {"jscc": "JSCC"}  # other encoders than the two-step one and "none" (uniform quantisation + Huffman)


def _ms(v: object) -> str:
    return "–" if v is None or pd.isna(v) else f"{1e3 * float(v):.2f}"


def _pct(v: float) -> str:
    return f"{100 * v:.2f} %"


def in_split_order(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by split (the model's order, input to output: each row's `split_order`), then method."""
    order = rows.groupby("split")["split_order"].min()
    return rows.assign(_split=rows["split"].map(order)).sort_values(["_split", "method"], kind="stable")


@dataclass(frozen=True)
class GridKnobs:
    """What a profile's grid trains with, so that a row's setting names only what differs: its pruning run's knobs
    (the budget's, spelt by `full_run`) and how its learned encoders train."""

    run: dict[str, Any]
    encoding: dict[str, Any]

    @staticmethod
    def of(profile: Profile) -> GridKnobs:
        return GridKnobs(full_run(profile.prune.knobs()), profile.encoding_knobs())


def coding_label(knobs: dict[str, Any], grid: GridKnobs | None = None) -> str:
    """A `three_step` row's coding: bits of uniform + Huffman, or the learned encoder's size, with its training
    where it is not the profile's."""
    encoder = str(knobs.get("encoder", "none"))
    if encoder == "none":
        return f"{knobs.get('bits', 8)}-bit+Huffman"
    if encoder != "two_step":
        return CODINGS.get(encoder, encoder)
    enc = EncodingConfig.from_knobs(knobs)
    text = f"codebook {enc.codebook}" if enc.quantizer == "vector" else f"encoder d={enc.d} {enc.bits}-bit"
    epochs = knobs.get("enc_epochs", enc.epochs)
    if grid is not None and (epochs, enc.backbone) != (grid.encoding["enc_epochs"], grid.encoding["enc_backbone"]):
        how = {"server": "device frozen", "finetune": "fine-tuned"}.get(enc.backbone, enc.backbone)
        text += f" ({epochs} ep, {how})"
    return text


def setting(row: pd.Series, grid: GridKnobs | None = None) -> str:
    """A row's knobs in a few words; pruning knobs that differ from the grid's are named."""
    knobs = row["knobs"] if isinstance(row["knobs"], dict) else {}
    if row["method"] == "three_step":
        coding = coding_label(knobs, grid)
        level = row.get("level")
        if not (pd.notna(level) and level >= 0):
            return f"unpruned {coding}"
        grid_run = grid.run if grid is not None else {}
        run = full_run({k: v for k, v in knobs.items() if k in RUN_KNOBS})
        other = {k: run[k] for k in grid_run if run[k] != grid_run[k]}
        return f"level {int(level)} {coding}" + (
            " (" + ", ".join(f"{k}={v}" for k, v in other.items()) + ")" if other else "")
    if row["method"] == "two_step_pruning":
        return f"step1 {knobs.get('step1')}"
    if row["method"] == "bottlenet_pp":
        return f"ratio {knobs.get('ratio')}"
    return "base"


def pruning_section(rows: pd.DataFrame, grid: GridKnobs | None = None) -> str:
    out = ["| split | method | setting | channel sparsity | device MFLOPs | FLOPs reduction | device memory kB | "
           "device CPU ms | bits/image | test acc |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    keep = rows[rows["method"].isin(["original", "three_step", "two_step_pruning"])]
    keep = keep[~keep["split"].isin(["server_only", "device_only"])]
    for s in dict.fromkeys(in_split_order(keep)["split"]):
        at = keep[keep["split"] == s].copy()
        at["_rank"] = at["method"].map({"original": 0, "three_step": 1, "two_step_pruning": 2})
        for _, r in at.sort_values(["_rank", "device_flops"], ascending=[True, False]).iterrows():
            sparsity = r.get("sparsity", 0.0)
            reduction = r.get("flops_reduction")
            out.append(f"| {s} | {r['method']} | {setting(r, grid)} | {0.0 if pd.isna(sparsity) else sparsity:.3f} | "
                       f"{r['device_flops'] / 1e6:.2f} | {'1.00' if pd.isna(reduction) else f'{reduction:.2f}'}x | "
                       f"{r['device_memory_bytes'] / 1e3:,.0f} | {_ms(r.get('device_cpu_seconds'))} | "
                       f"{r['bits_actual']:,.1f} | {_pct(r['accuracy'])} |")
    return "\n".join(out)


def claim_section(rows: pd.DataFrame, threshold: float, grid: GridKnobs | None = None) -> str:
    claim = claim_by_split(rows, threshold)
    out = [f"Threshold {_pct(threshold)} on validation accuracy (the base model's minus the allowed drop); every "
           "choice reads the validation accuracy, the test accuracy reports. Per split, `three_step`'s variant with "
           "the fewest bits at or above it, and the baselines' rows at the same split that dominate it (no more "
           "device FLOPs and no more bits).", "",
           "| split | three_step bits/image | device MFLOPs | val acc | test acc | nowhere dominated | dominated by |",
           "|---|---:|---:|---:|---:|---|---|"]
    for _, c in claim.iterrows():
        holds = "–" if c["holds"] is None or pd.isna(c["holds"]) else ("yes" if c["holds"] else "**no**")
        bits = "–" if pd.isna(c["bits"]) else f"{c['bits']:,.1f}"
        flops = "–" if pd.isna(c["device_flops"]) else f"{c['device_flops'] / 1e6:.2f}"
        acc = "–" if pd.isna(c["accuracy"]) else _pct(c["accuracy"])
        val = "–" if pd.isna(c[DECISION_COLUMN]) else _pct(c[DECISION_COLUMN])
        out.append(f"| {c['split']} | {bits} | {flops} | {val} | {acc} | {holds} | {c['dominated_by'] or ''} |")
    above = qualifying(rows, threshold)
    best = above.sort_values("bits_actual").drop_duplicates(["split", "method"])
    out += ["", "Every method's best (fewest bits) at or above the threshold:", "",
            "| split | method | setting | bits/image (ideal) | device MFLOPs | val acc | test acc |",
            "|---|---|---|---:|---:|---:|---:|"]
    for _, r in in_split_order(best).iterrows():
        out.append(f"| {r['split']} | {r['method']} | {setting(r, grid)} | {r['bits_actual']:,.1f} "
                   f"({r['bits_ideal']:,.1f}) | {r['device_flops'] / 1e6:.2f} | {_pct(r[DECISION_COLUMN])} | "
                   f"{_pct(r['accuracy'])} |")
    beaten = dominated_points(rows, threshold)
    above = int((above["method"] == "three_step").sum())
    out += ["", f"Whole curve: {len(beaten)} of the {above} `three_step` rows at or above the threshold are dominated "
            "by a baseline row at any split" + (": " + ", ".join(
                f"{b['split']} ({b['bits']:,.0f} bits) by {b['by_method']} at {b['by_split']} ({b['by_bits']:,.0f} "
                "bits)" for _, b in beaten.iterrows()) if len(beaten) else "") + "."]
    return "\n".join(out)


def composed_section(rows: pd.DataFrame, threshold: float, grid: GridKnobs | None = None) -> str:
    """Per split, `three_step`'s pruned and coded row that dominates the most qualifying baseline rows there, and
    what it does not dominate."""
    table = composed_against_baselines(rows, threshold)
    by_id = rows.set_index("id")
    out = ["Per split, of the `three_step` rows both pruned and coded that meet the threshold, the one that dominates "
           "the most qualifying baseline rows at its split (`original`, `two_step_pruning`, `bottlenet_pp`):", "",
           "| split | pruned and coded row | device MFLOPs | bits/image | val acc | test acc | dominates | "
           "not dominated (what it loses on) |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for _, c in table.iterrows():
        if not isinstance(c["id"], str):  # no pruned and coded row there (pandas may hold that None as NaN)
            out.append(f"| {c['split']} | – | – | – | – | – | 0 of {c['rivals']} | {c['not_dominated']} |")
            continue
        out.append(f"| {c['split']} | {setting(by_id.loc[c['id']], grid)} | "
                   f"{c['device_flops'] / 1e6:.2f} | {c['bits']:,.1f} | {_pct(c[DECISION_COLUMN])} | "
                   f"{_pct(c['accuracy'])} | {c['dominated']} of {c['rivals']} | {c['not_dominated'] or '–'} |")
    return "\n".join(out)


def goals_section(rows: pd.DataFrame, threshold: float, split: str = "conv4_x", device: DeviceProfile = PI3) -> str:
    """The crossed space's figures at `split`: the most device FLOPs saved at <= 64 bits, the fewest bits, and
    `three_step`'s latency at 10 and 40 kB/s against every baseline's on `device` (with its memory figure) and the
    RTX 2080 Ti (validation-chosen, test-reported)."""
    above = qualifying(rows[(rows["split"] == split) & (rows["method"] == "three_step")], threshold)
    out = []
    small = above[above["bits"] <= 64]
    if small.empty:
        out.append(f"- {split}: no `three_step` row at <= 64 bits meets the threshold.")
    else:
        r = small.sort_values(["flops_reduction", "bits"], ascending=[False, True]).iloc[0]
        out.append(f"- {split}, most device FLOPs saved at <= 64 bits: **{r['flops_reduction']:.2f}x** "
                   f"({r['device_flops'] / 1e6:.2f} MFLOPs, {r['bits']:,.1f} bits, {setting(r)}), validation "
                   f"{_pct(r[DECISION_COLUMN])}, test {_pct(r['accuracy'])}.")
    if not above.empty:
        r = above.sort_values(["bits", "device_flops"]).iloc[0]
        out.append(f"- {split}, fewest bits: **{r['bits']:,.1f} bits** actual ({r['bits_ideal']:,.1f} ideal), "
                   f"{r['flops_reduction']:.2f}x fewer FLOPs ({setting(r)}), validation {_pct(r[DECISION_COLUMN])}, "
                   f"test {_pct(r['accuracy'])}.")
    ends = {"device_only": "device-only", "server_only": "edge-only"}
    named = rows.assign(method=[ends.get(s, m) for s, m in zip(rows["split"], rows["method"], strict=True)])
    table = latency_vs_rate(named, device, "rtx2080ti", [10 * 8e3, 40 * 8e3], threshold)
    for rate in (10, 40):
        at = table[table["rate"] == rate * 8e3].set_index("method")["latency"]
        if "three_step" not in at or len(at) < 2:
            continue
        rival = at.drop("three_step")
        out.append(f"- {rate} kB/s: `three_step` {1e3 * at['three_step']:.2f} ms, "
                   f"{at['three_step'] / rival.min():.2f} of the fastest baseline ({rival.idxmin()}, "
                   f"{1e3 * rival.min():.2f} ms); goal: at most 0.5.")
    return "\n".join(out)


def latency_section(rows: pd.DataFrame, threshold: float, device: DeviceProfile = PI3) -> str:
    rates = [r * 8e3 for r in RATES_KBPS]
    ends = {"device_only": "device-only", "server_only": "edge-only"}  # the paper's two end-point baselines
    rows = rows.assign(method=[ends.get(s, m) for s, m in zip(rows["split"], rows["method"], strict=True)])
    table = latency_vs_rate(rows, device, "rtx2080ti", rates, threshold)
    methods = sorted(table["method"].unique())
    memory = ("the model's parameters + activations" if device.memory_figure == "model" else
              f"the peak resident memory of its {device.memory_figure} process, measured")
    out = ["Latency (s) of each method's best variant at or above the threshold (validation accuracy), Raspberry "
           f"Pi 3 (24 GFLOP/s, 1 GB, a device part's memory counted as {memory}) device, RTX 2080 Ti (13.45 "
           "TFLOP/s) server; in brackets: split. Device-only and edge-only are the `original` rows at the end points.",
           "", "| method | " + " | ".join(f"{r:g} kB/s" for r in RATES_KBPS) + " |",
           "|---|" + "---:|" * len(RATES_KBPS)]
    for m in methods:
        cells = []
        for rate in rates:
            hit = table[(table["method"] == m) & (table["rate"] == rate)]
            cells.append("–" if hit.empty else f"{hit['latency'].iloc[0]:.4f} ({hit['split'].iloc[0]})")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    claims = latency_growth(table, POOR_KBPS * 8e3, GOOD_KBPS * 8e3).set_index("method")
    if "three_step" in claims.index:
        mine = claims.loc["three_step"]
        rivals = claims.drop(index="three_step")
        poor = ", ".join(f"{r:g}" for r in RATES_KBPS if r <= POOR_KBPS)
        out += ["", f"The paper's Fig. 4 text, in numbers: `three_step` takes at most **{mine['worst_poor_s']:.4f} "
                f"s** at the rates up to {POOR_KBPS} kB/s ({poor} kB/s; paper: around 0.1 s); from "
                f"{GOOD_KBPS} kB/s down to {mine['lowest_rate'] / 8e3:g} kB/s its latency grows "
                f"{mine['growth']:.2f}x, each baseline's "
                + ", ".join(f"{m} {r['growth']:.2f}x ({r['at_lowest_s']:.4f} s)" for m, r in rivals.iterrows())
                + " (paper: the baselines' latency increases dramatically)."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--profile", default="quick", choices=list(PROFILES))
    parser.add_argument("--drop", type=float, default=0.02, help="allowed accuracy drop (fraction, default 0.02)")
    parser.add_argument("--memory", choices=list(MEMORY_FIGURES), default="model",
                        help="Fig. 4's memory check: the model's parameters + activations, or the measured peak "
                             "resident memory of a runtime's device process (`python -m engine footprint` first)")
    args = parser.parse_args(argv)
    profile, data, base = profile_data(args.profile, args.data)
    rows = ResultsStore().table()
    rows = rows[rows["base_id"] == base.id] if not rows.empty else rows
    # source-coded rows only: JSCC rows send channel symbols, not bits (their figures: `python -m engine noisy`)
    jscc = rows["knobs"].map(lambda k: isinstance(k, dict) and k.get("encoder") == "jscc") if not rows.empty else []
    rows = rows[~jscc & rows["bits_actual"].notna()].copy() if not rows.empty else rows
    if rows.empty:
        raise SystemExit(f"no rows for the {args.profile} base model {base.id}; run "
                         f"`python -m engine sweep --profile {args.profile}` first")
    threshold = validation_threshold(rows, args.drop)
    if threshold is None:
        raise SystemExit(f"the rows of {base.id} have no validation figure: re-measure them "
                         f"(`python -m engine sweep --profile {args.profile}`)")
    counts = rows.groupby("method").size()
    print(f"Profile {args.profile}, base model `{base.id}` (width {base.width:g}, {base.epochs} epochs in "
          f"{rows['train_seconds'].iloc[0] / 60:.1f} min, validation accuracy "
          f"{_pct(rows['base_val_accuracy'].iloc[0])}, test accuracy {_pct(rows['base_test_accuracy'].iloc[0])}); "
          "rows: "
          + ", ".join(f"{m} {n}" for m, n in counts.items()) + ".\n")
    print("### Pruning at each split\n")
    grid = GridKnobs.of(profile)
    print(pruning_section(rows, grid))
    print("\n### Best variant per split and the paper's claim\n")
    print(claim_section(rows, threshold, grid))
    print("\n### The three steps together\n")
    print(composed_section(rows, threshold, grid))
    print()
    device = dataclasses.replace(PI3, memory_figure=args.memory)
    print(goals_section(rows, threshold, device=device))
    print("\n### Figure 4: latency against link rate\n")
    print(latency_section(rows, threshold, device))


if __name__ == "__main__":
    main()
