"""Export the chosen configuration (a versioned selection JSON, a deployable bundle), the results table (CSV) and the
figures (PNG, HTML); import a selection JSON to reproduce its view, or a results file (`python -m engine results
--export`) to merge its rows, and measure imported rows again here. Uploaded files are parsed as JSON only, size
capped, and validated before anything changes (`engine.export.parse_selection`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from app import ui
from engine import queue as jobq
from engine.coding import NotTrained
from engine.deploy.export import write_bundle
from engine.deploy.selection import parse_selection, selection_json, variant_config
from engine.errors import UserError, one_line
from engine.exchange import MAX_RESULTS_BYTES, import_rows, imported, parse_results, remeasure_specs
from engine.figures import (
    figure_html,
    figure_png,
    latency_breakdown_figure,
    latency_rate_figure,
    plane_figure,
    png_export_problem,
)
from engine.latency import latency_table
from engine.pareto import best_per_method, best_variant
from engine.paths import cache_dir
from engine.profiles import PROFILES, recipe_of

MAX_IMPORT_MB = 1

env = ui.environment()
ui.sync_url()  # the view survives page switches (see ui.view)
v = ui.view()
st.title("Export and import")
data, base = ui.page_base(env)
table = ui.results(base)
ui.example_note(table)


# -- import -----------------------------------------------------------------------------------------------------


def _apply(doc: dict) -> None:
    """Reproduce an imported selection: its environment in the sidebar and its variant selected (a callback, so the
    sidebar's widgets are drawn with the new values)."""
    env_values = {k: str(x)[:64] for k, x in (doc.get("environment") or {}).items()
                  if k in ui.ENVIRONMENT_KEYS and isinstance(x, (str, int, float)) and not isinstance(x, bool)}
    ui.apply_view({**env_values, "sel": doc["id"]})
    st.session_state["_import_done"] = doc["id"]


def _import_section() -> None:
    st.subheader("Import a selection")
    upload = st.file_uploader("Selection JSON exported by coinfer", type=["json"], max_upload_size=MAX_IMPORT_MB,
                              key="import_file")
    pasted = st.text_area("… or paste its text", key="import_text", height=80)
    if done := st.session_state.pop("_import_done", None):
        st.success(f"Selection `{done}` applied: the sidebar shows its environment and every page selects it.")
    raw = upload.getvalue() if upload is not None else pasted.strip()
    if not raw:
        return
    try:
        doc = parse_selection(raw)
        cfg = variant_config(doc)  # parse_selection made the checks `jobs submit` makes
    except UserError as exc:
        st.error(f"{exc} — nothing was changed.")
        return
    measured = not table.empty and (table["id"] == cfg.id).any() or cfg.id in ui.results_store()
    st.markdown(f"**{cfg.method} @ {cfg.split}** · `{cfg.id}` · exported by coinfer {doc.get('code_version')} "
                f"· {'measured here' if measured else 'not measured here'}")
    st.button("Apply this selection", type="primary", on_click=_apply, args=(doc,))
    if not measured:
        local = ui.local_data(env)
        can_queue = local is not None and local.fingerprint == cfg.base.dataset
        profile = recipe_of(cfg.base)
        if st.button("Measure it here (queue the job)", disabled=not can_queue or profile is None,
                     help=None if can_queue else "its dataset is not the local one"):
            ui.start_jobs([jobq.JobSpec.for_variant(cfg, profile or env.profile, ui.data_path())])
            st.success(f"Queued `{cfg.id}`; follow it on the Jobs page.")


def _import_results_section() -> None:
    st.subheader("Import results")
    upload = st.file_uploader("Results file (`python -m engine results --export FILE`)", type=["json"],
                              max_upload_size=MAX_RESULTS_BYTES >> 20, key="results_file")
    if done := st.session_state.pop("_results_done", None):
        st.success(done)
    if upload is not None:
        try:
            rows = parse_results(upload.getvalue(), upload.name)
        except UserError as exc:
            st.error(f"{exc} — nothing was imported.")
            return
        where = sorted({r["measured_on"] for r in rows})
        st.markdown(f"**{len(rows)} rows** measured on {'; '.join(where[:3]) or 'an unknown machine'}")
        if st.button("Import these rows", type="primary"):
            try:
                added, skipped = import_rows(rows, ui.results_store())
            except UserError as exc:
                st.error(str(exc))
                return
            st.session_state["_results_done"] = (f"Imported {added} rows; skipped {skipped} already stored with the "
                                                 "same figures.")
            st.rerun()
    _remeasure_imported()


def _remeasure_imported() -> None:
    """One button that queues a job for each imported row of this base model, to measure it on this machine."""
    rows = imported(table)
    if rows.empty:
        return
    here = [r for r in rows.to_dict("records") if data is not None and r.get("dataset_fingerprint") == data.fingerprint]
    st.caption(f"{len(rows)} rows of this base model were measured elsewhere: " + "; ".join(
        sorted(set(rows["measured_on"].dropna().astype(str)))[:3]))
    if st.button(f"Re-measure the {len(here)} imported rows here (queue the jobs)", disabled=not here,
                 help=None if here else "their dataset is not the local one"):
        specs, refused = remeasure_specs(here, ui.data_path())
        ui.start_jobs(specs)
        st.success(f"Queued {len(specs)} jobs; follow them on the Jobs page."
                   + (f" {len(refused)} rows no profile here rebuilds were left out." if refused else ""))


# -- export -----------------------------------------------------------------------------------------------------


def _bundle(row: dict, environment: dict) -> None:
    """Build the bundle (device and server TorchScript programs, codec tables) into the session for download."""
    try:
        if data is None or data.fingerprint != str(row.get("dataset_fingerprint")):
            raise UserError("the bundle is built from the cached models and the dataset, which is not the local one "
                            "here: choose the local dataset in the sidebar")
        cfg = variant_config(selection_json(row, environment))
        ctx_profile = PROFILES.get(env.profile)
        from engine.methods import RunContext

        with tempfile.TemporaryDirectory() as tmp, st.spinner("Tracing the device and server parts…"):
            path = write_bundle(cfg, RunContext(data, ctx_profile, cache_dir(), may_train=False),
                                Path(tmp) / f"{cfg.id}.zip", metrics=row, environment=environment)
            st.session_state["_bundle"] = (cfg.id, path.read_bytes())
    except NotTrained as exc:
        ui.queue_untrained(cfg, env.profile, exc)
    except UserError as exc:
        st.error(str(exc))
    except Exception as exc:  # noqa: BLE001 - a readable line, not a traceback
        st.error(f"The bundle could not be built: {one_line(exc)}")


def _export_section() -> None:
    if table.empty:
        ui.no_rows("the selection, bundle and figures to export")
        return
    need = ui.threshold(env, table)
    lat = latency_table(table, env.device, env.server, env.rate_bps, delay_s=env.delay_s)
    sel = ui.selected_id()
    if sel and (lat["id"] == sel).any():
        row = lat[lat["id"] == sel].iloc[0]
        st.markdown(f"Chosen: the selected variant **{row['method']} @ {row['split']}** (`{sel}`).")
    else:
        row = best_variant(table, env.device, env.server, env.rate_bps, need, delay_s=env.delay_s, latencies=lat)
        if row is None:
            st.warning("Nothing selected, and no variant meets the accuracy threshold and fits the device: click a "
                       "point on a plane to choose one.")
            return
        st.markdown(f"Chosen: nothing is selected, so the best variant for this environment, **{row['method']} @ "
                    f"{row['split']}** (`{row['id']}`). Click a point on a plane to choose another.")
    row_dict = {k: (None if isinstance(x, float) and np.isnan(x) else x) for k, x in row.to_dict().items()}
    environment = {**ui.environment_params(), "rate_bps": env.rate_bps, "delay_s": env.delay_s,
                   "device_profile": env.device.describe(), "server_profile": env.server.describe(),
                   "accuracy_threshold": need}
    c1, c2, c3 = st.columns(3)
    try:
        doc = selection_json(row_dict, environment)
        c1.download_button("Selection (JSON)", json.dumps(doc, indent=1, sort_keys=True), f"coinfer-{doc['id']}.json",
                           "application/json", on_click="ignore", type="primary")
    except UserError as exc:
        c1.error(str(exc))
        doc = None
    if c2.button("Build the deployable bundle", disabled=doc is None,
                 help="device and server parts as TorchScript, the quantiser and codec tables, a sha256 manifest"):
        _bundle(row_dict, environment)
    if (built := st.session_state.get("_bundle")) and doc is not None and built[0] == doc["id"]:
        c2.download_button("Bundle (.zip)", built[1], f"coinfer-{built[0]}-bundle.zip", "application/zip",
                           on_click="ignore")
    c3.download_button(f"Results table (CSV, {len(ui.all_results())} rows)", lambda: ui.results_store().to_csv(),
                       "coinfer-results.csv", "text/csv", on_click="ignore")

    st.subheader("Figures")
    figures = {
        "plane": lambda: plane_figure(lat, ui.png_bits(table, data), "bits_ideal" if v["bits"] == "ideal"
                                      else "bits_actual", threshold=need, below=v["below"], front=v["front"],
                                      selected=sel),
        "latency-vs-rate": lambda: latency_rate_figure(ui.latency_curves(base, env, need), env.rate_bps),
        "latency-breakdown": lambda: latency_breakdown_figure(best_per_method(table, env.device, env.server,
                                                                              env.rate_bps, need,
                                                                              delay_s=env.delay_s)),
    }
    problem = png_export_problem()
    if problem:
        st.warning(problem)
    for name, make in figures.items():
        a, b, c = st.columns([2, 1, 1])
        a.markdown(f"**{name}**")
        b.download_button("PNG", lambda make=make: figure_png(make()), f"coinfer-{name}.png", "image/png",
                          key=f"png_{name}", on_click="ignore", disabled=problem is not None)
        c.download_button("HTML", lambda make=make: figure_html(make()), f"coinfer-{name}.html", "text/html",
                          key=f"html_{name}", on_click="ignore")


st.subheader("Export")
_export_section()
_import_section()
_import_results_section()
