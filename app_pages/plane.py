"""The communication-computation plane (Shao & Zhang 2020, Figs. 1 and 3): device FLOPs against bits per image."""

from __future__ import annotations

import streamlit as st

from app import ui
from engine import queue as jobq
from engine.errors import UserError
from engine.figures import plane_figure
from engine.knobs import knob_text
from engine.latency import latency_table
from engine.models import model_label
from engine.pareto import DECISION_COLUMN, best_variant, validation_label
from engine.units import format_flops, format_seconds

env = ui.environment()
ui.sync_url()  # the view survives page switches (see ui.view)
v = ui.view()
st.title("Communication-computation plane")


def _no_data(message: str) -> None:
    """The page without a dataset: how to provide one, and a download button (a job, like the others)."""
    st.error(message)
    if failed := st.session_state.pop("_examples_error", None):
        st.error(failed)
    spec = jobq.JobSpec.for_data(None)
    download = ui.job_queue().get(spec.id)
    downloading = download is not None and download.status in jobq.ACTIVE
    if downloading:
        st.progress(download.progress, text="Downloading CIFAR-10 with torchvision…")
    elif download is not None and download.status == "failed":
        st.warning(f"The download failed: {download.error}")
    if st.button("Download CIFAR-10 (170 MB, needs internet)", disabled=downloading):
        ui.start_jobs([spec])
        st.rerun()
    ui.example_buttons(primary=True)
    st.stop()


data = ui.local_data(env)
if data is None and not env.data:
    try:
        ui.dataset(env.profile)
    except UserError as exc:
        _no_data(str(exc))
data, base = ui.page_base(env)
table = ui.results(base)
st.caption(f"dataset **{data.name if data else env.data}**"
           + (f" ({len(data.test_y):,} test images)" if data else "")
           + f" · {model_label(base.model)} width **{base.width:g}** · profile **{env.profile}** · base model "
             f"`{base.id}`")

if table.empty:
    st.info("No measured variants for this base model yet. The plane shows the untrained profile: device FLOPs and "
            "the 8-bit size of each split's feature (no coding, no accuracy). Start the profile to train the base "
            "model and measure every method; points appear as their jobs finish.")
    if data is None:
        st.warning("This dataset is known only from the results store: put it here (COINFER_DATA) to profile it.")
        st.stop()
    active = any(j.status in jobq.ACTIVE for j in ui.job_queue().jobs(base_id=base.id))
    ui.emulated_bf16_warning(base)
    if message := st.session_state.pop("_examples_error", None):
        st.error(message)
    ui.example_buttons(only=env.profile)
    if st.button(f"Start the {env.profile} profile", type="primary", disabled=active,
                 help="queues every variant of the profile's sweep, cheapest first (`original` within minutes), "
                      "then crosses three_step's snapshots that hold the threshold with the profile's codings as "
                      "rows arrive"):
        ui.start_sweep(env.profile, base)
        st.rerun()
    ui.progress_strip(base, frozenset())
    profile = ui.untrained_profile(env.profile, base.width, data.fingerprint, base.model)
    ui.chart(plane_figure(profile, ui.png_bits(table, data), bits_column="bits_8bit"), "plane")
    st.dataframe(profile[["split", "device_flops", "server_flops", "device_memory_bytes", "feature_shape",
                          "bits_8bit"]], hide_index=True)
    st.stop()

need = ui.threshold(env, table)
st.caption(ui.threshold_text(env, need))
ui.remeasure_note(table)
ui.example_note(table)
splits = ui.split_order(table)
c1, c2, c3, c4 = st.columns([1.2, 1.2, 1, 2])
key = ui.bind("bits", lambda: v["bits"] == "ideal")
ideal = c1.toggle("Ideal bits", value=st.session_state[key], key=key,
                  help="the entropy model's ideal size instead of the actual bitstream's length")
key = ui.bind("below", lambda: v["below"] == "hide")
hide = c2.toggle("Hide below threshold", value=st.session_state[key], key=key,
                 help="variants under the accuracy threshold: hidden when on, grey when off")
fronts = {"overall": "overall", "method": "per method", "none": "none"}
key = ui.bind("front", lambda: v["front"] if v["front"] in fronts else "overall")
front = c3.radio("Pareto front", list(fronts), index=list(fronts).index(st.session_state[key]), key=key,
                 format_func=fronts.get, horizontal=True)
key = ui.bind("splits", lambda: [s for s in ui.parse_list(v["splits"]) if s in splits])
chosen = c4.multiselect("Splits", splits, default=st.session_state[key], placeholder="all splits", key=key)
ui.set_view(bits="ideal" if ideal else "actual", below="hide" if hide else "grey", front=front,
            splits=",".join(chosen))
bits_column = "bits_ideal" if ideal else "bits_actual"

lat = latency_table(table, env.device, env.server, env.rate_bps, delay_s=env.delay_s)
shown = lat[lat["split"].isin(chosen)] if chosen else lat
png = ui.png_bits(table, data)
below, selected = "hide" if hide else "grey", ui.selected_id()
ui.chart(lambda: plane_figure(shown, png, bits_column=bits_column, threshold=need, below=below, front=front,
                              selected=selected), "plane",
         deps=(base.id, env, tuple(chosen), png, bits_column, need, below, front, selected))

best = best_variant(table, env.device, env.server, env.rate_bps, need, delay_s=env.delay_s, latencies=lat)
if best is None:
    st.warning("No variant meets the accuracy threshold and fits the device memory in this environment.")
else:
    st.success(f"Best for this environment: **{best['method']} @ {best['split']}** — "
               f"{format_seconds(best['latency'])} end to end, {best[DECISION_COLUMN]:.2%} validation accuracy "
               f"(test {best['accuracy']:.2%}), "
               f"{best['bits_actual']:,.0f} bits, {format_flops(best['device_flops'])} on the device "
               f"(`{best['id']}`). Click a point to select a variant.")
amplified = shown[(shown[bits_column] > (png or float("inf"))) & (shown["device_flops"] > 0)]
if len(amplified):
    st.caption(f"Data amplification (feature larger than the PNG input): {len(amplified)} variant(s), e.g. "
               + ", ".join(sorted(set(amplified["split"]))))
ui.progress_strip(base, frozenset(table["id"]))
shown = shown.assign(validation=validation_label(shown))
cols = [c for c in ("method", "split", "knobs", DECISION_COLUMN, "accuracy", "validation", "device_flops",
                    "server_flops", "device_memory_bytes", "bits_actual", "bits_ideal", "bits_raw", "latency",
                    "feasible", "id") if c in shown]
listed = ui.paged(shown[cols].sort_values(["method", "device_flops"]), "plane_table_page")
st.dataframe(listed.assign(knobs=listed["knobs"].map(knob_text)) if "knobs" in cols else listed, hide_index=True,
             column_config={"accuracy": st.column_config.NumberColumn("test accuracy", format="percent"),
                            DECISION_COLUMN: st.column_config.NumberColumn("validation accuracy", format="percent"),
                            "validation": st.column_config.TextColumn("note"),
                            "latency": st.column_config.NumberColumn(format="%.4g s")})
