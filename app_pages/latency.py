"""Latency against link rate (Shao & Zhang 2020, Fig. 4): each method's best feasible variant at each rate, under
the sidebar's device, server and accuracy requirement."""

from __future__ import annotations

import dataclasses

import streamlit as st

from app import ui
from engine.figures import latency_breakdown_figure, latency_rate_figure
from engine.latency import PROPAGATION_COLUMN, latency_table
from engine.models import model_label
from engine.pareto import DECISION_COLUMN, best_per_method
from engine.units import format_bytes, format_rate, format_seconds

env, data, base, table = ui.open_page("Latency vs link rate",
                                      "the latency curves and the best configuration per method")

need = ui.threshold(env, table)
v = ui.view()
key = ui.bind("overheads", lambda: v["overheads"] == "on")
with_overheads = st.toggle("Count measured coding and framing", value=st.session_state[key], key=key,
                           help="add each variant's entropy coding time (encode + decode back to back, measured on "
                                "the machine that profiled it: after idle time between images it takes longer, as "
                                "the Live page measures) and the protocol's framing (17 bytes and the padding to a "
                                "byte) per image to the paper's model")
ui.set_view(overheads="on" if with_overheads else "off")
overheads = ui.deployment_overheads(with_overheads)
formula = "F_dev/C_dev + B/R + F_srv/C_srv" + (" + t_coding + framing/R" if with_overheads else "") \
    + (f" + D (propagation delay, {env.delay_s * 1e3:g} ms one way)" if env.delay_s else "")
curves = ui.latency_curves(base, env, need, overheads)
st.caption(f"device **{env.device.describe()}** · server **{env.server.describe()}** · {ui.threshold_text(env, need)} "
           f"· {model_label(base.model)} width {base.width:g} · latency = {formula}, B = actual bits per image")
ui.remeasure_note(table)


@st.fragment
def at_rate(env: ui.Environment) -> None:
    """The link-rate slider and field and what depends on the rate: a new rate reruns this fragment, not the whole
    app."""
    env = dataclasses.replace(env, rate_bps=ui.rate_control() * 8e3)
    lat = latency_table(table, env.device, env.server, env.rate_bps, overheads=overheads, delay_s=env.delay_s)
    infeasible = lat[~lat["feasible"]]
    if curves.empty:
        st.warning("No variant meets the accuracy requirement and fits the device memory. Allow a larger accuracy drop "
                   "or a device with more memory in the sidebar.")
    else:
        sel = ui.selected_id()
        selected = lat[lat["id"] == sel].iloc[0] if sel and (lat["id"] == sel).any() else None
        ui.chart(latency_rate_figure(curves, env.rate_bps, selected=selected), "latency_rate")

        st.subheader(f"Best configuration per method at {format_rate(env.rate_bps)}")
        best = best_per_method(table, env.device, env.server, env.rate_bps, need, overheads=overheads, latencies=lat)
        ui.chart(latency_breakdown_figure(best), "latency_breakdown")
        terms = [c for c in ("t_device", "t_coding", "t_transmit", PROPAGATION_COLUMN, "t_overhead", "t_server")
                 if c in best.columns]
        shown = best[["method", "split", DECISION_COLUMN, "accuracy", "latency", *terms, "bits_actual", "device_flops",
                      "device_memory_bytes", "id"]]
        st.dataframe(shown, hide_index=True, column_config={
            "accuracy": st.column_config.NumberColumn("test accuracy", format="percent"),
            DECISION_COLUMN: st.column_config.NumberColumn("validation accuracy", format="percent"),
            **{c: st.column_config.NumberColumn(format="%.4g s") for c in ("latency", *terms)},
        })
        winner = best.iloc[0]
        delay_text = f" + {format_seconds(env.delay_s)} delay" if env.delay_s else ""
        st.success(f"Fastest: **{winner['method']} @ {winner['split']}**, {format_seconds(winner['latency'])} end "
                   f"to end ({format_seconds(winner['t_device'])} device + {format_seconds(winner['t_transmit'])} "
                   f"link{delay_text} + {format_seconds(winner['t_server'])} server), {winner[DECISION_COLUMN]:.2%} "
                   f"validation accuracy (test {winner['accuracy']:.2%}) (`{winner['id']}`).")
        if selected is not None:
            fits = "" if selected["feasible"] else " — infeasible: its device part does not fit the device memory"
            st.info(f"Selected: **{selected['method']} @ {selected['split']}**, {format_seconds(selected['latency'])} "
                    f"at this rate{fits}.")

    if not infeasible.empty:
        st.warning(f"{len(infeasible)} variant(s) are infeasible: their device part does not fit the device's "
                   f"{format_bytes(env.device.memory_bytes)}: "
                   + ", ".join(f"{r.method} @ {r.split} ({format_bytes(r.device_memory_bytes)})"
                               for r in infeasible.head(12).itertuples())
                   + (" …" if len(infeasible) > 12 else ""))


at_rate(env)
