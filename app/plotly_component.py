"""A Plotly chart that updates in place. `st.plotly_chart` keys its element by the figure's spec, so any change (a
moved rate line, a new threshold) mounts a new chart and Plotly draws it from scratch; this component keeps one plot
per key and hands each new figure to `Plotly.react`, which redraws only what changed. A click on a point is sent
back as a one-shot trigger in the shape of Streamlit's selection event (`{"selection": {"points": [...]}}`).

plotly.js is the installed plotly package's own copy (the version that wrote the figure), served from the app's
static folder (`server.enableStaticServing`)."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

import plotly
import plotly.graph_objects as go
import streamlit as st
from plotly.io.json import to_json_plotly

from engine.figures import page_template

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"  # the app's static folder: beside the main script

_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let gd = parentElement.querySelector("div.coinfer-plot");
  if (!gd) {
    gd = document.createElement("div");
    gd.className = "coinfer-plot";
    parentElement.appendChild(gd);
  }
  gd.coinferTrigger = setTriggerValue;
  if (!window.coinferPlotly) {
    window.coinferPlotly = window.Plotly ? Promise.resolve(window.Plotly) : new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = data.src;
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => { window.coinferPlotly = null; reject(new Error(data.src)); };
      document.head.appendChild(script);
    });
  }
  window.coinferPlotly.then((Plotly) => {
    const figure = JSON.parse(data.figure);
    Plotly.react(gd, figure.data, figure.layout, { responsive: true, displaylogo: false });
    if (!gd.coinferBound) {
      gd.coinferBound = true;
      gd.on("plotly_click", (event) => gd.coinferTrigger("clicked", {
        selection: { points: event.points.map((p) => ({ id: p.id ?? null, customdata: p.customdata ?? null })) },
      }));
    }
  }, (error) => {
    gd.textContent = "plotly.js could not be loaded from " + error.message
      + ": start the dashboard with `make run` (it serves the app's static folder).";
  });
}
"""

_CSS = "div.coinfer-plot { width: 100%; }"

_component = st.components.v2.component("coinfer_plotly_chart", js=_JS, css=_CSS, isolate_styles=False)


def plotly_js_src() -> str:
    """The URL of plotly.js, relative to the page: the installed plotly's own file, copied once per version into
    the static folder (atomically, so concurrent sessions never serve half a file)."""
    return _served_plotly_js(STATIC_DIR)


@functools.cache
def _served_plotly_js(static_dir: Path) -> str:  # once per process and folder: no file check on every chart drawn
    name = f"plotly-{plotly.__version__}.min.js"
    target = static_dir / name
    if not target.exists():
        static_dir.mkdir(exist_ok=True)
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", tmp)
        os.replace(tmp, target)
    return f"app/static/{name}"


def figure_json(fig: go.Figure, key: str = "") -> str:
    """The figure as Plotly JSON in the dashboard's look (`engine.figures.page_template`), with a `uirevision` (the
    chart's key) that keeps a person's zoom and legend clicks across updates."""
    spec = fig.to_plotly_json()
    layout = spec.setdefault("layout", {})
    layout["template"] = page_template()
    layout.setdefault("uirevision", key or "chart")
    return to_json_plotly(spec)


def plotly_chart(fig: go.Figure | str, key: str) -> Any:
    """Draw `fig` (a figure, or its `figure_json` under this key) under `key` (updated in place on later runs); the
    selection event of a point clicked since the last run, else None."""
    try:
        src = plotly_js_src()
    except OSError as exc:
        st.error(f"Cannot serve plotly.js from {STATIC_DIR} ({exc.strerror}); make that folder writable.")
        return None
    figure = fig if isinstance(fig, str) else figure_json(fig, key)
    result = _component(data={"figure": figure, "src": src}, key=key, on_clicked_change=lambda: None)
    return getattr(result, "clicked", None)
