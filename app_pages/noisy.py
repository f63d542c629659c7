"""Noisy channels (Shao & Zhang 2020, Fig. 5): learning-driven JSCC against learned source coding, the 8-bit
Huffman feature and the PNG input, each of the latter sent at channel capacity with its actual bitstream and with its
ideal length, at the conv4_x split; where JSCC wins and where it loses; a slider picks the channel condition, the
cheapest scheme actually sent that meets the accuracy requirement there, and its accuracy across conditions (the
mismatch curve)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import ui
from engine.coding.channels import CHANNELS
from engine.fig5 import (
    FIG5_CHANNELS,
    FIG5_SPLIT,
    best_schemes,
    fig5_curves,
    fig5_plan,
    fig5_rows,
    mismatch_curve,
    thresholds,
    verdict,
)
from engine.figures import mismatch_figure, noisy_cost_figure

env = ui.environment()
st.title("Noisy channels")
data, base = ui.page_base(env)
table = fig5_rows(ui.results(base))
jscc = table[table["knob_jscc_channel"].isin(FIG5_CHANNELS)] if "knob_jscc_channel" in table else table.iloc[:0]
if jscc.empty:
    st.info(f"No noisy-channel rows for this base model yet. `python -m engine noisy --profile {env.profile}` "
            f"trains and measures them (JSCC over AWGN and BSC and the learned source-coding references at "
            f"{FIG5_SPLIT}, plus the `original` row there); as jobs they are `three_step` variants with knobs "
            "`encoder=jscc`, `snapshot=none` and `jscc_*`.")
    st.stop()
ui.example_note(table)

planned = table["id"].isin({cfg.id for cfg in fig5_plan(base, env.profile)})
if planned[jscc.index].any() and not planned.all():  # other budgets' or hand-run variants of this base model too
    only_plan = st.toggle(f"Only the {env.profile} profile's variants", value=True, key="noisy_plan_only",
                          help=f"what `python -m engine noisy --profile {env.profile}` measures ({int(planned.sum())} "
                               f"row(s)); off: also the {int((~planned).sum())} other Fig. 5 rows of this base model "
                               "(earlier budgets, hand-run variants), each a measured model")
    table = table[planned] if only_plan else table

val_need, test_need = thresholds(table, env.accuracy_drop)
st.caption(f"split **{FIG5_SPLIT}** · ResNet18 width {base.width:g} · accuracy ≥ **{test_need:.2%}** on test "
           f"(choices on validation: ≥ {val_need:.2%}; base − {env.accuracy_drop * 100:g} points) · JSCC accuracy is "
           "the mean over seeded channel realisations; the other schemes are sent at the Shannon capacity, with "
           "their actual bitstream (dotted) and their ideal, entropy-model length (dashed)")

channel = st.radio("Channel", FIG5_CHANNELS, horizontal=True, key="noisy_channel",
                   format_func=lambda c: {"awgn": "AWGN (latency, W = 1 MHz)", "bsc": "BSC (channel bits)"}[c])
cls = CHANNELS.get(channel)
curves = fig5_curves(table, channel, env.accuracy_drop)
conditions = sorted(curves["condition"].unique().tolist())
if not conditions:
    st.warning(f"No {channel.upper()} rows for this base model: run `python -m engine noisy --channel {channel}`.")
    st.stop()
chosen = st.select_slider(cls.condition_label, options=conditions, value=conditions[len(conditions) // 2],
                          key=f"noisy_{channel}_condition", format_func=lambda c: f"{c:g}")
ui.chart(noisy_cost_figure(curves, channel, chosen), f"noisy_cost_{channel}")
summary, *per_condition = verdict(curves)
st.info(summary)
st.markdown("\n".join(f"- {sentence}" for sentence in per_condition))

best = best_schemes(curves)  # what is actually sent; every candidate was chosen on validation accuracy
here = best[best["condition"] == chosen]
unit = "s" if channel == "awgn" else "channel bits"
if here.empty:
    st.warning(f"No scheme meets the accuracy requirement at {cls.condition_name} = {chosen:g}.")
else:
    win = here.iloc[0]
    what = f"{win['uses']:g} {cls.use_label}" if win["scheme"] == "JSCC" else f"{win['bits']:,.0f} source bits"
    st.success(f"Best at {cls.condition_name} = {chosen:g}: **{win['scheme']}** ({what}), {win['cost']:.4g} {unit}, "
               f"test accuracy {win['accuracy']:.2%}.")
    if win["scheme"] == "JSCC":
        curve = mismatch_curve(table, win["id"])
        st.subheader(f"Its accuracy at other conditions (model `{win['id']}`)")
    else:  # a code at capacity for `chosen` is decodable where the channel is at least as good, not below
        better = [c for c in conditions if (c >= chosen) == cls.higher_is_better or c == chosen]
        curve = pd.DataFrame({"condition": better, "accuracy": win["accuracy"], "accuracy_std": 0.0})
        st.subheader(f"Its accuracy at other conditions (coded at capacity for {chosen:g})")
        st.caption("A channel code at capacity for this condition decodes wherever the channel is at least as good "
                   "and fails beyond it (the cliff effect), so the curve stops there.")
    ui.chart(mismatch_figure(curve, channel, test_need, chosen, win["scheme"]), f"noisy_mismatch_{channel}")

st.dataframe(curves[curves["condition"] == chosen][["scheme", "uses", "bits", "cost", "accuracy", "accuracy_std",
                                                     "val_accuracy", "meets", "id"]],
             hide_index=True, column_config={"accuracy": st.column_config.NumberColumn(format="percent"),
                                             "val_accuracy": st.column_config.NumberColumn(format="percent")})
