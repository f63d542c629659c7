"""Latency against link rate (Shao & Zhang 2020, Fig. 4): each method's best feasible variant at each rate, under
the sidebar's device, server and accuracy requirement."""

from __future__ import annotations

import numpy as np
import streamlit as st

from engine.figures import latency_breakdown_figure, latency_rate_figure
from engine.latency import latency_table
from engine.pareto import best_per_method, latency_vs_rate
from engine.units import format_bytes, format_rate, format_seconds
from ui import base_config, environment, require_data, results, threshold

env = environment()
st.title("Latency vs link rate")
data = require_data(env)
base = base_config(env, data)
table = results(base)
if table.empty:
    st.info("No measured variants for this base model yet: start the `original` method (or a sweep) on the "
            "Trade-off plane page; rows appear here as jobs finish.")
    st.stop()

need = threshold(env, table)
st.caption(f"device **{env.device.describe()}** · server **{env.server.describe()}** · accuracy ≥ **{need:.2%}** "
           f"(base {need + env.accuracy_drop:.2%} − {env.accuracy_drop * 100:g} points) · ResNet18 width "
           f"{base.width:g} · latency = F_dev/C_dev + B/R + F_srv/C_srv, B = actual bits per image")

rates = np.geomspace(1e3 * 8, 1e8 * 8, 61)  # 1 kB/s .. 100 MB/s
curves = latency_vs_rate(table, env.device, env.server, rates, need)
if curves.empty:
    st.warning("No variant meets the accuracy requirement and fits the device memory. Allow a larger accuracy drop "
               "or a device with more memory in the sidebar.")
    st.stop()
st.plotly_chart(latency_rate_figure(curves, env.rate_bps), key="latency_rate")

st.subheader(f"Best configuration per method at {format_rate(env.rate_bps)}")
best = best_per_method(table, env.device, env.server, env.rate_bps, need)
st.plotly_chart(latency_breakdown_figure(best), key="latency_breakdown")
shown = best[["method", "split", "accuracy", "latency", "t_device", "t_transmit", "t_server", "bits_actual",
              "device_flops", "id"]]
st.dataframe(shown, hide_index=True, column_config={
    "accuracy": st.column_config.NumberColumn(format="percent"),
    **{c: st.column_config.NumberColumn(format="%.4g s") for c in ("latency", "t_device", "t_transmit", "t_server")},
})
winner = best.iloc[0]
st.success(f"Fastest: **{winner['method']} @ {winner['split']}**, {format_seconds(winner['latency'])} end to end, "
           f"{winner['accuracy']:.2%} accuracy.")

lat = latency_table(table, env.device, env.server, env.rate_bps)
infeasible = lat[~lat["feasible"]]
if not infeasible.empty:
    st.warning(f"{len(infeasible)} variant(s) do not fit the device's {format_bytes(env.device.memory_bytes)}: "
               + ", ".join(f"{r.method} @ {r.split} ({format_bytes(r.device_memory_bytes)})"
                           for r in infeasible.itertuples()))
