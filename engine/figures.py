"""Plotly figures of the paper's views, built from result tables (no Streamlit here, so exports reuse them)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from engine.latency import PROPAGATION_COLUMN
from engine.pareto import DECISION_COLUMN, NO_VALIDATION, decision_accuracy, meets_threshold, pareto_front

METHOD_COLORS = {
    "original": "#1f77b4",
    "two_step_pruning": "#ff7f0e",
    "bottlenet_pp": "#2ca02c",
    "three_step": "#d62728",
    "profile": "#7f7f7f",
}

SYMBOL_FILLED, SYMBOL_OPEN = 0, 100  # plotly's numeric codes of "circle" and "circle-open" (numeric: fast to send)
# A plane of more points than this draws them with WebGL (Scattergl): SVG, one element per point, gets slow to draw,
# hover and pan past a few thousand.
WEBGL_POINTS = 3000
BITS_LABELS = {"bits_actual": "bits per image (actual bitstream)", "bits_ideal": "bits per image (ideal)",
               "bits_8bit": "bits per image (8-bit, uncoded)"}


_HOVER_BITS = ("bits_actual", "bits_ideal", "bits_8bit", "bits_raw", "png_bits")


def _fmt(value: object, spec: str) -> str | None:
    """`value` formatted with `spec`, or None when it is missing or not a number."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return None
    return None if math.isnan(float(value)) else format(float(value), spec)


def knobs_text(knobs: object) -> str:
    """A variant's knobs as "a=1, b=2" (sorted); "" when it has none."""
    if type(knobs) is dict or isinstance(knobs, Mapping):  # a results table's knobs are dicts: no ABC check for them
        return ", ".join(f"{k}={v}" for k, v in sorted(knobs.items()))
    return ""


def hover_text(row: Mapping, bits_column: str = "bits_actual") -> str:
    """A variant's whole configuration and every metric, as plotly hover HTML (one row of a results table, with the
    latency columns of `engine.latency.latency_table` when they are there)."""
    lines = [f"<b>{row.get('method')} @ {row.get('split')}</b>"]
    if knobs := knobs_text(row.get("knobs")):
        lines.append(f"knobs {knobs}")
    for key, label, spec in (("accuracy", "test accuracy", ".2%"), (DECISION_COLUMN, "validation accuracy", ".2%"),
                             ("device_flops", "device FLOPs", ",.4g"),
                             ("server_flops", "server FLOPs", ",.4g"),
                             ("device_memory_bytes", "device memory B", ",.4g"),
                             ("device_params_bytes", "· parameters B", ",.4g"),
                             ("device_activation_bytes", "· activations B", ",.4g")):
        text = _fmt(row.get(key), spec)
        if text is not None:
            lines.append(f"{label} {text}")
    for col in _HOVER_BITS:
        text = _fmt(row.get(col), ",.1f")
        if text is not None:
            lines.append(f"{col} {text}{' ◀' if col == bits_column else ''}")
    shape = row.get("feature_shape")
    if isinstance(shape, (list, tuple)) and shape:
        lines.append("feature " + "x".join(map(str, shape)))
    latency = _fmt(row.get("latency"), ".4g")
    if latency is not None:
        terms = ("t_device", "t_transmit", *([PROPAGATION_COLUMN] if row.get(PROPAGATION_COLUMN) else []), "t_server")
        parts = " + ".join(_fmt(row.get(c), ".3g") or "?" for c in terms)
        fits = "" if row.get("feasible", True) else " · does NOT fit the device memory"
        lines.append(f"latency {latency} s = {parts}{fits}")
    width, seed = _fmt(row.get("width"), "g"), row.get("seed")
    if width is not None:
        lines.append(f"width {width}" + (f", seed {seed}" if seed is not None and not pd.isna(seed) else ""))
    if isinstance(row.get("id"), str):
        lines.append(f"id {row['id']}")
    if isinstance(row.get("measured_on"), str):
        lines.append(f"measured on {row['measured_on']}")
    return "<br>".join(lines)


_HOVER_NUMBERS = (("accuracy", "test accuracy", ".2%"), (DECISION_COLUMN, "validation accuracy", ".2%"),
                  ("device_flops", "device FLOPs", ",.4g"),
                  ("server_flops", "server FLOPs", ",.4g"), ("device_memory_bytes", "device memory B", ",.4g"),
                  ("device_params_bytes", "· parameters B", ",.4g"),
                  ("device_activation_bytes", "· activations B", ",.4g"),
                  *((c, c, ",.1f") for c in _HOVER_BITS), ("latency", "latency s", ".4g"),
                  ("t_device", "· device s", ".3g"), ("t_transmit", "· link s", ".3g"),
                  (PROPAGATION_COLUMN, "· propagation s", ".3g"), ("t_server", "· server s", ".3g"),
                  ("width", "width", "g"), ("seed", "seed", "d"))


def _hover_data(points: pd.DataFrame, bits_column: str) -> tuple[np.ndarray, pd.Series, str]:
    """What a point's hover shows (a variant's whole configuration and every metric), built for thousands of rows:
    the numbers as one float array (`customdata`, sent as binary), the configuration as one short string per point
    (`hovertext`, an object array: plotly takes it without a check per item), and the template that formats them in
    the browser."""
    knobs = points["knobs"] if "knobs" in points else pd.Series(None, index=points.index, dtype=object)
    knob_text = [knobs_text(k) or "no knobs" for k in knobs]
    feasible = points["feasible"].astype(bool) if "feasible" in points else pd.Series(True, index=points.index)
    ids = points["id"].fillna("").astype(str) if "id" in points else pd.Series("", index=points.index)
    head = ("<b>" + points["method"].astype(str) + " @ " + points["split"].astype(str) + "</b> · id " + ids + "<br>"
            + pd.Series(knob_text, index=points.index)
            + np.where(feasible, "", "<br><b>does NOT fit the device memory</b>") + _measured_on(points))
    lines, columns = ["%{hovertext}"], []
    for column, label, spec in _HOVER_NUMBERS:
        if column in points and points[column].notna().any():
            lines.append(f"{label} %{{customdata[{len(columns)}]:{spec}}}" + (" ◀" if column == bits_column else ""))
            columns.append(pd.to_numeric(points[column], errors="coerce").to_numpy(dtype=float))
    numbers = np.column_stack(columns) if columns else np.zeros((len(points), 0))
    return numbers, pd.Series(head.to_numpy(dtype=object), index=points.index), "<br>".join(lines) + "<extra></extra>"


def _measured_on(points: pd.DataFrame) -> pd.Series:
    """"<br>measured on ..." for rows imported from a results file, "" for rows measured here."""
    if "measured_on" not in points:
        return pd.Series("", index=points.index)
    where = points["measured_on"].map(lambda w: f"<br>measured on {w}" if isinstance(w, str) and w else "")
    return where.astype(str)


def _scatter(**props: object) -> go.Scatter:
    """A scatter trace built without plotly's per-property validation (plotly's private `_validate` switch, pinned
    plotly): with thousands of points validation costs more than drawing; the page tests render every figure."""
    return go.Scatter(**props, _validate=False)


def _scattergl(**props: object) -> go.Scattergl:
    """`_scatter` drawn with WebGL, for thousands of points."""
    return go.Scattergl(**props, _validate=False)


def _point_ids(frame: pd.DataFrame) -> np.ndarray | None:
    """Per-point variant ids (plotly's `ids`): a click's selection event carries the point's id. An object array:
    plotly takes it whole, a list item by item."""
    if "id" not in frame or not frame["id"].notna().all():
        return None
    return frame["id"].astype(str).to_numpy(dtype=object)


def plane_figure(table: pd.DataFrame, png_bits: float | None, bits_column: str = "bits_actual",
                 title: str = "", *, threshold: float | None = None, below: str = "grey", front: str = "overall",
                 selected: str | None = None, highlight: Mapping[str, str] | None = None,
                 height: int = 520) -> go.Figure:
    """The communication-computation plane (Shao & Zhang 2020, Figs. 1 and 3): device FLOPs against bits per image,
    log axes, one colour per method. Variants whose validation accuracy is under the `threshold` are greyed
    (`below="grey"`) or left out (`"hide"`), and so are measured rows without a validation figure (a trace of their
    own: re-measure them); the Pareto front of the others is a step line (`front`: "overall", "method" or "none"). The
    server-only cost (0 FLOPs) is the input PNG line; the region above it (data amplification) is shaded and points
    there are hollow. `selected` (an id) gets a star, `highlight` (id -> label) rings with labels. Over `WEBGL_POINTS`
    points every trace is drawn with WebGL (a WebGL trace is drawn above the SVG ones: the front, the star and the
    rings stay on top of the points only when they are WebGL too)."""
    fig = go.Figure(_validate=False)  # see _scatter
    points = table[(table["device_flops"] > 0) & table[bits_column].notna()].sort_values("device_flops")
    unvalidated = decision_accuracy(points).isna() & _measured(points)
    ok = meets_threshold(points, threshold) & ~unvalidated
    few = len(points) <= 40
    trace = _scattergl if len(points) > WEBGL_POINTS else _scatter
    numbers, heads, template = _hover_data(points, bits_column)
    row = pd.Series(np.arange(len(points)), index=points.index)
    for method, group in points[ok].groupby("method", sort=False):
        amplified = (group[bits_column] > png_bits).to_numpy() if png_bits else np.zeros(len(group), dtype=bool)
        fig.add_trace(trace(
            x=group["device_flops"], y=group[bits_column], mode="markers+text" if few else "markers", name=method,
            legendgroup=method, text=group["split"], textposition="top center", textfont={"size": 10},
            marker={"size": 10 if few else 7, "color": METHOD_COLORS.get(method, "#444"),
                    "symbol": np.where(amplified, SYMBOL_OPEN, SYMBOL_FILLED), "line": {"width": 2}},
            ids=_point_ids(group), customdata=numbers[row[group.index]], hovertext=heads[group.index].to_numpy(),
            hovertemplate=template, unselected={"marker": {"opacity": 0.9}},
        ))
    for name, grey in (("below the accuracy threshold", points[~ok & ~unvalidated]),
                       (NO_VALIDATION, points[unvalidated])):
        if len(grey) and below != "hide":
            fig.add_trace(trace(
                x=grey["device_flops"], y=grey[bits_column], mode="markers", name=name,
                text=grey["split"], marker={"size": 7, "color": "#c7c7c7", "line": {"width": 0},
                                            "symbol": "x" if name == NO_VALIDATION else "circle"}, opacity=0.7,
                ids=_point_ids(grey), customdata=numbers[row[grey.index]], hovertext=heads[grey.index].to_numpy(),
                hovertemplate=template, unselected={"marker": {"opacity": 0.6}},
            ))
    _add_fronts(fig, points[ok], front, bits_column, trace)
    for ids, name, symbol, size in (([selected] if selected else [], "selected", "star", 18),
                                    (list(highlight or {}), "pinned", "circle-open", 22)):
        mark = points[points["id"].isin(ids)] if "id" in points and ids else points.iloc[:0]
        if mark.empty:
            continue
        labels = [(highlight or {}).get(i, "") for i in mark["id"]] if name == "pinned" else None
        fig.add_trace(trace(
            x=mark["device_flops"], y=mark[bits_column], mode="markers+text" if labels else "markers", name=name,
            text=labels, textposition="middle right", textfont={"size": 14, "color": "#000"},
            marker={"symbol": symbol, "size": size, "color": "#ffd700" if symbol == "star" else "#000",
                    "line": {"width": 2, "color": "#000"}},
            ids=_point_ids(mark), customdata=numbers[row[mark.index]],
            hovertext=heads[mark.index].to_numpy(), hovertemplate=template,
            hoverinfo="text"))
    if png_bits:
        _add_png_line(fig, png_bits, float(points[bits_column].max()) * 3 if len(points) else png_bits * 10)
    fig.update_xaxes(type="log", title="on-device computation (FLOPs, FlopCounterMode, batch 1)")
    fig.update_yaxes(type="log", title=BITS_LABELS.get(bits_column, bits_column))
    fig.update_layout(title=title, legend_title="method", hovermode="closest", height=height, clickmode="event+select",
                      margin={"l": 60, "r": 20, "t": 50 if title else 20, "b": 50})
    return fig


def _measured(points: pd.DataFrame) -> pd.Series:
    """True where a row has a measured (test) accuracy: not an untrained profile's row."""
    if "accuracy" not in points.columns:
        return pd.Series(False, index=points.index, dtype=bool)
    return pd.to_numeric(points["accuracy"], errors="coerce").notna()


def _add_fronts(fig: go.Figure, kept: pd.DataFrame, front: str, bits_column: str,
                trace: Callable[..., go.Scatter | go.Scattergl] = _scatter) -> None:
    """The Pareto front of the variants over the threshold as a step line: one overall, one per method, or none
    (`trace`: `_scatter`, or `_scattergl` on a plane drawn with WebGL)."""
    fronts = [] if front == "none" or kept.empty else (
        [("Pareto front", kept, "#222", "solid")] if front == "overall"
        else [(m, g, METHOD_COLORS.get(m, "#444"), "dot") for m, g in kept.groupby("method", sort=False)])
    for name, group, color, dash in fronts:
        pf = pareto_front(group, "device_flops", bits_column)
        fig.add_trace(trace(
            x=pf["device_flops"], y=pf[bits_column], mode="lines", line={"shape": "hv", "color": color, "dash": dash,
                                                                         "width": 1.5},
            name="Pareto front" if front == "overall" else f"{name} front", legendgroup=name,
            showlegend=front == "overall", hoverinfo="skip"))


def _add_png_line(fig: go.Figure, png_bits: float, points_top: float) -> None:
    """The input PNG line (the server-only cost) and the shaded data-amplification region above it."""
    top = max(points_top, png_bits * 3)
    fig.add_shape(type="rect", xref="paper", x0=0, x1=1, yref="y", y0=png_bits, y1=top, fillcolor="#d62728",
                  opacity=0.06, line_width=0, layer="below")
    fig.add_shape(type="line", xref="paper", x0=0, x1=1, yref="y", y0=png_bits, y1=png_bits,
                  line={"dash": "dash", "color": "#888"})
    # annotations on a log axis take log10 coordinates (the shapes above take data values)
    for text, xpos, anchor in ((f"input (PNG) {png_bits:,.0f} bits = server-only cost", 1.0, "top"),
                               ("data amplification ↑", 0.0, "bottom")):
        fig.add_annotation(text=text, xref="paper", x=xpos, xanchor="right" if xpos else "left", yref="y",
                           y=math.log10(png_bits), yanchor=anchor, showarrow=False, font={"color": "#666"})


def latency_rate_figure(curves: pd.DataFrame, chosen_rate_bps: float | None = None, *,
                        selected: Mapping | None = None) -> go.Figure:
    """End-to-end latency of each method's best qualifying variant against the link rate (Shao & Zhang 2020,
    Fig. 4), rates shown in kB/s as in the paper; `curves` is `engine.pareto.latency_vs_rate`'s tidy table. Each
    method's curve is a line (hover on every rate) with a marker where each variant becomes the method's best:
    few marks to draw however fine the rate grid, one to click per variant. The chosen rate is a dotted line;
    `selected` (a `latency_table` row) is a star at that rate."""
    traces, shapes, annotations = [], [], []
    for method, group in curves.groupby("method", sort=False):
        color = METHOD_COLORS.get(method, "#444")
        kbps, latency, ids = group["rate"].to_numpy() / 8e3, group["latency"].to_numpy(), group["id"].to_numpy()
        knobs = [knobs_text(kn) for kn in group["knobs"]] if "knobs" in group else [""] * len(group)
        val = group[DECISION_COLUMN] if DECISION_COLUMN in group else pd.Series(np.nan, index=group.index)
        prop = group[PROPAGATION_COLUMN] if PROPAGATION_COLUMN in group else pd.Series(0.0, index=group.index)
        hover = [f"<b>{method}</b> @ {split}{f'<br>knobs {kn}' if kn else ''}<br>{k:,.3g} kB/s: {t * 1e3:,.2f} ms "
                 f"(device {d * 1e3:,.2f} + link {x * 1e3:,.2f}{f' + delay {p * 1e3:,.2f}' if p else ''} + server "
                 f"{s * 1e3:,.3f})<br>validation accuracy {v:.2%}, test accuracy {a:.2%}, {b:,.0f} bits<br>id {i}"
                 for split, kn, k, t, d, x, p, s, v, a, b, i in zip(group["split"], knobs, kbps, latency,
                                                                    group["t_device"], group["t_transmit"], prop,
                                                                    group["t_server"], val, group["accuracy"],
                                                                    group["bits"], ids, strict=True)]
        traces.append(_scatter(x=kbps, y=latency, mode="lines", name=method, legendgroup=method,
                               line={"color": color}, customdata=ids, hovertext=hover, hoverinfo="text"))
        first = np.r_[True, ids[1:] != ids[:-1]]
        traces.append(_scatter(x=kbps[first], y=latency[first], mode="markers", name=f"{method} variants",
                               legendgroup=method, showlegend=False, marker={"color": color, "size": 8},
                               customdata=ids[first], hovertext=[h for h, f in zip(hover, first, strict=True) if f],
                               hoverinfo="text"))
    if chosen_rate_bps:
        shapes.append({"type": "line", "xref": "x", "x0": chosen_rate_bps / 8e3, "x1": chosen_rate_bps / 8e3,
                       "yref": "paper", "y0": 0, "y1": 1, "line": {"dash": "dot", "color": "#555"}})
        annotations.append({"text": f"{chosen_rate_bps / 8e3:,.3g} kB/s", "x": math.log10(chosen_rate_bps / 8e3),
                            "xref": "x", "y": 1.0, "yref": "paper", "yanchor": "bottom",
                            "showarrow": False})  # log axis: log10 coordinates
    if chosen_rate_bps and selected is not None and _fmt(selected.get("latency"), "g") is not None:
        traces.append(_scatter(
            x=[chosen_rate_bps / 8e3], y=[selected["latency"]], mode="markers", name="selected",
            marker={"symbol": "star", "size": 18, "color": "#ffd700", "line": {"width": 2, "color": "#000"}},
            customdata=[selected.get("id")], hovertext=[hover_text(selected)], hoverinfo="text"))
    layout = {"xaxis": {"type": "log", "title": {"text": "link rate (kB/s)"}},
              "yaxis": {"type": "log", "title": {"text": "end-to-end latency (s)"}},
              "legend": {"title": {"text": "method"}}, "hovermode": "closest", "height": 460,
              "margin": {"l": 60, "r": 20, "t": 30, "b": 50}, "shapes": shapes, "annotations": annotations}
    return go.Figure(data=traces, layout=layout, _validate=False)  # one figure, built once: see _scatter


def latency_breakdown_figure(best: pd.DataFrame) -> go.Figure:
    """Stacked bars of device compute, transmission and server compute of each method's best variant, of the
    measured coding and framing/runtime costs when the table has them (`engine.latency.Overheads`), and of the
    propagation delay when it has one (`t_propagation`)."""
    labels = [f"{m} @ {s}" for m, s in zip(best["method"], best["split"], strict=True)]
    terms = (("t_device", "device compute", "#9467bd"), ("t_coding", "entropy coding", "#8c564b"),
             ("t_transmit", "transmission", "#17becf"), (PROPAGATION_COLUMN, "propagation delay", "#aec7e8"),
             ("t_overhead", "framing and runtime", "#7f7f7f"),
             ("t_server", "server compute", "#bcbd22"))
    ids = best["id"].tolist() if "id" in best else None
    bars = [go.Bar(y=labels, x=best[column].to_numpy(), name=name, orientation="h", marker_color=color,
                   customdata=ids, hovertemplate="%{y}: %{x:.4g} s<extra>" + name + "</extra>", _validate=False)
            for column, name, color in terms if column in best.columns]
    layout = {"barmode": "stack", "height": 90 + 40 * len(best), "xaxis": {"title": {"text": "seconds"}},
              "margin": {"l": 10, "r": 20, "t": 10, "b": 40}, "legend": {"orientation": "h"}}
    return go.Figure(data=bars, layout=layout, _validate=False)  # built once: see _scatter


_CHROME_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def png_export_problem() -> str | None:
    """Why figures cannot be written as PNG on this machine, in one line; None when they can. Plotly's image export
    (kaleido) drives a local Chrome or Chromium ($BROWSER_PATH, else the first on PATH)."""
    import importlib.util
    import os
    import shutil

    if importlib.util.find_spec("kaleido") is None:
        return "PNG export needs the kaleido package (pip install -r requirements.txt); the HTML export works without"
    path = os.environ.get("BROWSER_PATH")
    if path and not os.access(path, os.X_OK):
        return f"PNG export: no browser at BROWSER_PATH={path}; install chromium or fix the path (HTML works without)"
    if not path and not any(shutil.which(n) for n in _CHROME_NAMES):
        return "PNG export needs Chrome or Chromium (apt-get install chromium); the HTML export works without"
    return None


@functools.cache
def page_template() -> dict:
    """The look of the dashboard's charts, which exports share: plotly_white in the page's sans font, axes making
    room for their labels (close to Streamlit's own chart theme)."""
    template = pio.templates["plotly_white"].to_plotly_json()
    layout = template.setdefault("layout", {})
    layout["font"] = {**layout.get("font", {}), "family": '"Source Sans", "Source Sans Pro", sans-serif'}
    for axis in ("xaxis", "yaxis"):
        layout[axis] = {**layout.get(axis, {}), "automargin": True}
    return template


def _as_on_page(fig: go.Figure) -> go.Figure:
    return go.Figure(fig).update_layout(template=page_template())  # a copy: the caller's figure stays as it was


def figure_png(fig: go.Figure, scale: float = 2.0) -> bytes:
    """The figure as a PNG image, as the dashboard draws it; a UserError (one line) when this machine cannot render
    one."""
    from engine.errors import UserError

    problem = png_export_problem()
    if problem:
        raise UserError(problem)
    try:
        return _as_on_page(fig).to_image(format="png", scale=scale)
    except Exception as exc:  # noqa: BLE001 - the browser may fail in many ways
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"PNG export failed ({first}); download the HTML instead") from None


def figure_html(fig: go.Figure) -> bytes:
    """The figure as a self-contained HTML page, as the dashboard draws it (plotly.js inlined: it opens offline)."""
    return _as_on_page(fig).to_html(include_plotlyjs=True, full_html=True).encode()


# -- noisy channels (Shao & Zhang 2020, Fig. 5) -----------------------------------------------------------------

SCHEME_COLORS = {"JSCC": "#d62728", "learned source coding": "#9467bd", "8-bit Huffman feature": "#1f77b4",
                 "PNG input": "#7f7f7f"}  # a separate scheme's actual and ideal lengths share its colour
NOISY_AXES = {"awgn": ("SNR (dB)", "communication latency (s), W = 1 MHz"),
              "bsc": ("bit flip probability p", "communication overhead (channel bits per image)")}


def _scheme_line(scheme: str) -> dict[str, str | None]:
    """A scheme's line: JSCC solid, a separate scheme's actual bitstream dotted and its ideal length dashed, in the
    scheme's colour."""
    name, _, length = scheme.partition(" (")
    dash = None if scheme == "JSCC" else "dash" if length == "ideal)" else "dot"
    return {"color": SCHEME_COLORS.get(name, "#444"), "dash": dash}


def noisy_cost_figure(curves: pd.DataFrame, channel: str, chosen: float | None = None) -> go.Figure:
    """Fig. 5 of Shao & Zhang 2020: each scheme's cost against the channel condition (AWGN: latency against SNR;
    BSC: channel bits against p), log y; `curves` is `engine.fig5.fig5_curves`'s tidy table. JSCC points carry
    their number of channel uses, the separate-coding points their source bits (actual bitstream or ideal length,
    as the scheme's name says)."""
    fig = go.Figure()
    x_title, y_title = NOISY_AXES.get(channel, ("condition", "cost"))
    for scheme, group in curves.groupby("scheme", sort=False):
        group = group.sort_values("condition")
        jscc = scheme == "JSCC"
        labels = [f"k={u:g}" if jscc else "" for u in group["uses"]]
        hover = [f"<b>{scheme}</b> at {r.condition:g}: cost {r.cost:.4g}<br>"
                 + (f"{r.uses:g} channel uses" if jscc else f"{r.bits:,.1f} source bits at capacity"
                    + (" (ideal length)" if scheme.endswith("(ideal)") else ""))
                 + (f"<br>test accuracy {r.accuracy:.2%}" if pd.notna(r.accuracy) else "")
                 + (f"<br>id {r.id}" if isinstance(r.id, str) else "") for r in group.itertuples()]
        fig.add_trace(go.Scatter(x=group["condition"], y=group["cost"], mode="lines+markers+text" if jscc else
                                 "lines+markers", name=scheme, text=labels, textposition="top center",
                                 line=_scheme_line(scheme),
                                 customdata=group["id"], hovertext=hover, hoverinfo="text"))
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dot", line_color="#555", annotation_text=f"{chosen:g}",
                      annotation_position="top")
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(type="log", title=y_title)
    fig.update_layout(legend_title="scheme", hovermode="closest", height=440,
                      margin={"l": 60, "r": 20, "t": 30, "b": 50})
    return fig


def mismatch_figure(curve: pd.DataFrame, channel: str, threshold: float | None = None,
                    chosen: float | None = None, name: str = "accuracy") -> go.Figure:
    """Accuracy of one variant against the channel condition (the mismatch curve: a JSCC model evaluated at
    conditions other than the one it was chosen for), test mean with the spread over realisations."""
    x_title = NOISY_AXES.get(channel, ("condition", ""))[0]
    fig = go.Figure(go.Scatter(x=curve["condition"], y=curve["accuracy"], mode="lines+markers", name=name,
                               error_y={"type": "data", "array": curve.get("accuracy_std",
                                                                           pd.Series(0.0, index=curve.index))},
                               line={"color": SCHEME_COLORS["JSCC"]}))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color="#888", annotation_text=f"threshold {threshold:.2%}",
                      annotation_position="bottom right")
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dot", line_color="#555")
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title="test accuracy", tickformat=".1%")
    fig.update_layout(height=320, showlegend=False, margin={"l": 60, "r": 20, "t": 20, "b": 50})
    return fig
