"""Live co-inference: a short session of one variant, its exported device and server parts talking over a local
token-bucket link at the sidebar's rate and delay, with the measured latency beside the paper's latency model (device
and server preset to this CPU's measured FLOP/s, since both run here) and beside the model with the measured deployment
overheads (`engine.latency.Overheads`: the bundle's coding time after idling as long as a session idles per image,
framing, a null session's runtime cost)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from app.plotly_component import plotly_chart
from app.ui import base_config, environment, example_note, percent, queue_untrained, require_data, results, threshold
from engine.coding import NotTrained
from engine.deploy.bundle import load_bundle
from engine.deploy.client import live_session
from engine.deploy.export import write_bundle
from engine.deploy.selection import row_config
from engine.deploy.timing import (
    cold_coding_seconds,
    cpu_flops_per_s,
    modelled_latency,
    runtime_overhead_s,
    session_terms,
)
from engine.errors import UserError
from engine.latency import Overheads
from engine.methods import RunContext
from engine.pareto import DECISION_COLUMN, best_per_method
from engine.paths import cache_dir
from engine.profiles import PROFILES
from engine.units import format_rate, format_seconds

IDLE_S = (0.001, 0.003, 0.01, 0.03, 0.1)  # idle times the coding is timed after (s)


@st.cache_data(show_spinner="Measuring this CPU's FLOP/s…", ttl=600)
def _cpu_flops(width: float, input_shape: tuple[int, int, int], classes: int) -> float:
    return cpu_flops_per_s(width, input_shape, classes)


@st.cache_data(show_spinner="Measuring the runtime's own cost with a null session…", ttl=600)
def _runtime_overhead(rate_bps: float, input_shape: tuple[int, int, int], classes: int) -> float:
    return runtime_overhead_s(rate_bps, input_shape=input_shape, classes=classes)


env = environment()
st.title("Live co-inference")
data = require_data(env)
base = base_config(env, data)
table = results(base)
if table.empty:
    st.info("No measured variants for this base model yet: measure some on the Trade-off plane page first; a live "
            "session runs an exported variant.")
    st.stop()
example_note(table)

need = threshold(env, table)
best = best_per_method(table, env.device, env.server, env.rate_bps, need, delay_s=env.delay_s)
ids = list(dict.fromkeys([*best["id"], *table.sort_values(["method", "device_flops"])["id"]]))
rows = table.set_index("id")
variant = st.selectbox("Variant", ids, format_func=lambda i: f"{rows.loc[i, 'method']} @ {rows.loc[i, 'split']} · "
                       f"validation {percent(rows.loc[i].get(DECISION_COLUMN))} · "
                       f"test {percent(rows.loc[i, 'accuracy'])} · "
                       f"{rows.loc[i, 'bits_actual']:,.0f} bits · {i}",
                       help="the best variant of each method at the sidebar's rate first, then every measured one")
images = st.slider("Test images", 5, 100, 20, help="one image per message, sent one after another")
row = rows.loc[variant].copy()
row["id"] = variant
held = f", each message held {env.delay_s * 1e3:g} ms (the propagation delay)" if env.delay_s else ""
st.caption(f"link {format_rate(env.rate_bps)}, paced by a token bucket on the sender{held}; device and server run on "
           "this machine, so the model uses this CPU's measured FLOP/s for both.")

if st.button("Run live session", type="primary"):
    path = cache_dir() / "bundles" / variant
    try:
        try:
            bundle = load_bundle(path)
        except UserError:
            with st.spinner("Exporting the variant's bundle…"):
                ctx = RunContext(data, PROFILES.get(env.profile), cache_dir(), may_train=False)
                bundle = load_bundle(write_bundle(row_config(row), ctx, path, metrics=row.to_dict()))
        bar = st.progress(0.0, "session running")
        report = live_session(bundle, data.test_x[:images], data.test_y[:images].tolist(), env.rate_bps,
                              delay_s=env.delay_s, progress=lambda i, n: bar.progress(i / n, f"image {i} of {n}"))
        bar.empty()
    except NotTrained as exc:
        queue_untrained(row_config(row), env.profile, exc)
        st.stop()
    except UserError as exc:
        st.error(str(exc))
        st.stop()
    with st.spinner("Timing the bundle's coding after idling…"):  # on other images than the session's
        coding_at = cold_coding_seconds(bundle, data.test_x[images: images + 20], IDLE_S)
    st.session_state["live_session"] = (variant, (env.rate_bps, env.delay_s), report, coding_at)

done = st.session_state.get("live_session")
if done is None or done[0] != variant or done[1] != (env.rate_bps, env.delay_s):
    st.info("Press **Run live session** to start a local server and send the selected variant's bitstreams to it.")
    st.stop()

report, coding_at = done[2], done[3]
shape = (data.channels, *data.image_size)
flops = _cpu_flops(base.width, shape, data.num_classes)
model = modelled_latency(row, flops, flops, env.rate_bps, env.delay_s)
runtime = _runtime_overhead(env.rate_bps, shape, data.num_classes)
coding = coding_at(0.0)
for _ in range(3):  # the coding runs after idling for the rest of the modelled per-image period: a fixed point
    deployed = modelled_latency({**row.to_dict(), "coding_cpu_seconds": coding}, flops, flops, env.rate_bps,
                                env.delay_s, overheads=Overheads(per_image_s=runtime))
    coding = coding_at(deployed["latency"] - coding)
terms = session_terms(report, deployed)
cols = st.columns(5)
cols[0].metric("Median latency", format_seconds(report.median_s),
               f"{100 * (report.median_s - model['latency']) / model['latency']:+.1f} % vs paper's model",
               delta_color="off")
cols[1].metric("Model with overheads", format_seconds(deployed["latency"]),
               f"{100 * (report.median_s - deployed['latency']) / deployed['latency']:+.1f} % measured vs it",
               delta_color="off")
cols[2].metric("p95 latency", format_seconds(report.p95_s))
cols[3].metric("Accuracy", f"{report.accuracy:.0%}" if report.accuracy is not None else "n/a")
cols[4].metric("Bytes on the wire", f"{report.wire_bytes:,}")

fig = go.Figure()
fig.add_trace(go.Scatter(x=[t.seq for t in report.timings], y=report.latencies, mode="markers", name="measured",
                         marker={"color": "#d62728"}))
fig.add_trace(go.Scatter(x=[0, len(report.timings) - 1], y=[model["latency"]] * 2, mode="lines",
                         name="paper's model", line={"color": "#1f77b4", "dash": "dash"}))
fig.add_trace(go.Scatter(x=[0, len(report.timings) - 1], y=[deployed["latency"]] * 2, mode="lines",
                         name="model with overheads", line={"color": "#2ca02c", "dash": "dot"}))
fig.update_layout(xaxis_title="image", yaxis_title="end-to-end latency (s)", height=360,
                  title=f"{row['method']} @ {row['split']} over {format_rate(env.rate_bps)}")
plotly_chart(fig, "live_latency")

bars = go.Figure()
for term, color in (("device", "#1f77b4"), ("coding", "#9467bd"), ("transmit", "#ff7f0e"), ("server", "#2ca02c"),
                    ("other", "#7f7f7f")):
    part = terms[terms["term"] == term]
    bars.add_trace(go.Bar(x=part["seconds"].tolist(), y=part["source"].tolist(), name=term, orientation="h",
                          marker={"color": color}))
bars.update_layout(barmode="stack", xaxis_title="seconds per image (mean)", height=240)
plotly_chart(bars, "live_terms")
st.caption(f"this CPU: {flops / 1e9:.2f} GFLOP/s at batch 1. Modelled bars: the model with overheads (coding: this "
           f"bundle's encoding + decoding timed after idling as long as the modelled session idles per image, "
           f"{format_seconds(coding)}, against {format_seconds(coding_at(0.0))} back to back; other: framing bytes "
           f"on the link and the runtime's "
           f"{format_seconds(runtime)} per image measured with a null session); the paper's model is the same "
           "without coding and other.")
