"""Plotly figures of the paper's views, built from result tables (no Streamlit here, so exports reuse them)."""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go

METHOD_COLORS = {
    "original": "#1f77b4",
    "two_step_pruning": "#ff7f0e",
    "bottlenet_pp": "#2ca02c",
    "three_step": "#d62728",
    "profile": "#7f7f7f",
}

BITS_LABELS = {"bits_actual": "bits per image (actual bitstream)", "bits_ideal": "bits per image (ideal)",
               "bits_8bit": "bits per image (8-bit, uncoded)"}


def _hover(row: pd.Series, bits_column: str) -> str:
    lines = [f"<b>{row['method']} @ {row['split']}</b>"]
    if pd.notna(row.get("accuracy")):
        lines.append(f"accuracy {row['accuracy']:.2%}")
    lines.append(f"device {row['device_flops'] / 1e6:,.2f} MFLOPs, server {row['server_flops'] / 1e6:,.2f} MFLOPs")
    for col in ("bits_actual", "bits_ideal", "bits_8bit", "bits_raw"):
        if col in row and pd.notna(row[col]):
            mark = " ◀" if col == bits_column else ""
            lines.append(f"{col} {row[col]:,.1f}{mark}")
    if "device_memory_bytes" in row and pd.notna(row["device_memory_bytes"]):
        lines.append(f"device memory {row['device_memory_bytes'] / 1e3:,.1f} kB")
    if "feature_shape" in row and isinstance(row["feature_shape"], list):
        lines.append("feature " + "x".join(map(str, row["feature_shape"])))
    if "knobs" in row and isinstance(row["knobs"], dict) and row["knobs"]:
        lines.append("knobs " + json.dumps(row["knobs"], sort_keys=True))
    if "id" in row and isinstance(row["id"], str):
        lines.append(f"id {row['id']}")
    return "<br>".join(lines)


def plane_figure(table: pd.DataFrame, png_bits: float | None, bits_column: str = "bits_actual",
                 title: str = "") -> go.Figure:
    """The communication-computation plane (Shao & Zhang 2020, Figs. 1 and 3): device FLOPs against bits per image,
    log axes, one trace per method. The server-only point (0 FLOPs) is the input PNG line; points above that line
    suffer data amplification and are drawn hollow."""
    fig = go.Figure()
    points = table[(table["device_flops"] > 0) & table[bits_column].notna()].sort_values("device_flops")
    for method, group in points.groupby("method", sort=False):
        amplified = group[bits_column] > png_bits if png_bits else pd.Series(False, index=group.index)
        fig.add_trace(go.Scatter(
            x=group["device_flops"], y=group[bits_column], mode="lines+markers+text", name=method,
            text=group["split"], textposition="top center", textfont={"size": 10},
            line={"color": METHOD_COLORS.get(method, "#444")},
            marker={"size": 10, "symbol": ["circle-open" if a else "circle" for a in amplified],
                    "line": {"width": 2}},
            customdata=group.get("id"),
            hovertext=[_hover(r, bits_column) for _, r in group.iterrows()], hoverinfo="text",
        ))
    if png_bits:
        fig.add_hline(y=png_bits, line_dash="dash", line_color="#888",
                      annotation_text=f"input (PNG) {png_bits:,.0f} bits = server-only cost",
                      annotation_position="bottom right")
        top = max(float(points[bits_column].max()) * 3 if len(points) else png_bits * 10, png_bits * 3)
        fig.add_hrect(y0=png_bits, y1=top, fillcolor="#d62728", opacity=0.06, line_width=0,
                      annotation_text="data amplification", annotation_position="top left")
    fig.update_xaxes(type="log", title="on-device computation (FLOPs, FlopCounterMode, batch 1)")
    fig.update_yaxes(type="log", title=BITS_LABELS.get(bits_column, bits_column))
    fig.update_layout(title=title, legend_title="method", hovermode="closest", height=520,
                      margin={"l": 60, "r": 20, "t": 50 if title else 20, "b": 50})
    return fig


def latency_rate_figure(curves: pd.DataFrame, chosen_rate_bps: float | None = None) -> go.Figure:
    """End-to-end latency of each method's best qualifying variant against the link rate (Shao & Zhang 2020,
    Fig. 4), rates shown in kB/s as in the paper; `curves` is `engine.pareto.latency_vs_rate`'s tidy table."""
    fig = go.Figure()
    for method, group in curves.groupby("method", sort=False):
        fig.add_trace(go.Scatter(
            x=group["rate"] / 8e3, y=group["latency"], mode="lines+markers", name=method,
            line={"color": METHOD_COLORS.get(method, "#444"), "shape": "linear"}, customdata=group["id"],
            hovertext=[f"<b>{method}</b> @ {r.split}<br>{r.rate / 8e3:,.3g} kB/s: {r.latency * 1e3:,.2f} ms "
                       f"(device {r.t_device * 1e3:,.2f} + link {r.t_transmit * 1e3:,.2f} + server "
                       f"{r.t_server * 1e3:,.3f})<br>accuracy {r.accuracy:.2%}, {r.bits:,.0f} bits<br>id {r.id}"
                       for r in group.itertuples()],
            hoverinfo="text",
        ))
    if chosen_rate_bps:
        fig.add_vline(x=chosen_rate_bps / 8e3, line_dash="dot", line_color="#555",
                      annotation_text=f"{chosen_rate_bps / 8e3:,.3g} kB/s", annotation_position="top")
    fig.update_xaxes(type="log", title="link rate (kB/s)")
    fig.update_yaxes(type="log", title="end-to-end latency (s)")
    fig.update_layout(legend_title="method", hovermode="closest", height=460, margin={"l": 60, "r": 20, "t": 30,
                                                                                       "b": 50})
    return fig


def latency_breakdown_figure(best: pd.DataFrame) -> go.Figure:
    """Stacked bars of device compute, transmission and server compute of each method's best variant."""
    fig = go.Figure()
    labels = [f"{r.method} @ {r.split}" for r in best.itertuples()]
    for column, name, color in (("t_device", "device compute", "#9467bd"), ("t_transmit", "transmission", "#17becf"),
                                ("t_server", "server compute", "#bcbd22")):
        fig.add_trace(go.Bar(y=labels, x=best[column], name=name, orientation="h", marker_color=color,
                             hovertemplate="%{y}: %{x:.4g} s<extra>" + name + "</extra>"))
    fig.update_layout(barmode="stack", height=90 + 40 * len(best), xaxis_title="seconds",
                      margin={"l": 10, "r": 20, "t": 10, "b": 40}, legend_orientation="h")
    return fig
