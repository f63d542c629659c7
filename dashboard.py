"""coinfer dashboard: navigation and the shared sidebar (the edge environment). Run with `make run`.

The view state (page, profile, width, dataset, device and server, link rate and delay, accuracy drop, the selected
variant, pins and axes) lives in the URL's query parameters, so a copied URL reopens the same view; switching pages
keeps it (see `ui.view`)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import streamlit as st

from app import ui
from engine.config import MAX_WIDTH
from engine.latency import DEVICES, MEMORY_FIGURES, DeviceProfile
from engine.models import MODELS
from engine.pareto import DEFAULT_ACCURACY_DROP
from engine.profiles import PROFILES

MIN_UI_WIDTH = 0.0625  # the sidebar's smallest width multiplier (the engine takes down to 1/64)

st.set_page_config(page_title="coinfer", page_icon="📡", layout="wide")

ROOT = Path(__file__).resolve().parent
PAGES = {  # url path -> (file, title, icon); a page file written later joins when it exists
    "plane": ("app_pages/plane.py", "Trade-off plane", "📈"),
    "latency": ("app_pages/latency.py", "Latency vs rate", "⏱️"),
    "noisy": ("app_pages/noisy.py", "Noisy channels", "📡"),
    "live": ("app_pages/live.py", "Live", "🔴"),
    "compare": ("app_pages/compare.py", "Compare", "⚖️"),
    "search": ("app_pages/search.py", "Search", "🔎"),
    "jobs": ("app_pages/jobs.py", "Jobs", "▶️"),
    "export": ("app_pages/export.py", "Export / import", "💾"),
}

v = ui.view()
from_url = ui.take_from_url()


def _reset_device(role: str) -> None:
    """A new preset brings its own FLOP/s and memory."""
    preset = DEVICES.get(st.session_state[f"w_{role}"])
    st.session_state[f"w_{role}_gflops"] = preset.flops_per_s / 1e9
    st.session_state[f"w_{role}_mb"] = preset.memory_bytes / 1e6


def _device_picker(role: str) -> DeviceProfile:
    names = DEVICES.names()
    key = ui.bind(role, lambda: v[role] if v[role] in names else VIEW_DEFAULT[role])
    preset = DEVICES.get(st.selectbox(f"{role.title()} preset", names, index=names.index(st.session_state[key]),
                                      key=key, on_change=_reset_device, args=(role,),
                                      format_func=lambda n: DEVICES.get(n).label or n))
    gkey = ui.bind(f"{role}_gflops", lambda: ui.parse_float(v[f"{role}_gflops"], preset.flops_per_s / 1e9, 0, 1e9))
    gflops = st.number_input(f"{role.title()} GFLOP/s", min_value=0.001, max_value=1e9, value=st.session_state[gkey],
                             key=gkey, format="%.4g",
                             help="effective FLOP/s of this side (2 FLOPs per multiply-add)")
    mkey = ui.bind(f"{role}_mb", lambda: ui.parse_float(v[f"{role}_mb"], preset.memory_bytes / 1e6, 0, 1e12))
    memory_mb = st.number_input(f"{role.title()} memory (MB)", min_value=0.001, max_value=1e12,
                                value=st.session_state[mkey], key=mkey,
                                format="%.6g", help="a variant whose device part needs more is infeasible, not slow")
    v.update({role: preset.name, f"{role}_gflops": f"{gflops:g}", f"{role}_mb": f"{memory_mb:g}"})
    edited = not (math.isclose(gflops * 1e9, preset.flops_per_s) and math.isclose(memory_mb * 1e6,
                                                                                 preset.memory_bytes))
    return DeviceProfile(preset.name, gflops * 1e9, memory_mb * 1e6, f"{preset.label or preset.name}"
                         f"{' (edited)' if edited else ''}")


def _reset_width() -> None:
    st.session_state["w_width"] = PROFILES.get(st.session_state["w_profile"]).width


VIEW_DEFAULT = ui.VIEW_DEFAULTS
pages = {name: st.Page(path, title=title, icon=icon, url_path=name, default=name == "plane")
         for name, (path, title, icon) in PAGES.items() if (ROOT / path).exists()}
page = st.navigation(list(pages.values()))
current = next(name for name, p in pages.items() if p is page)
with st.sidebar:
    st.markdown("### Model")
    profiles = PROFILES.names()
    key = ui.bind("profile", lambda: v["profile"] if v["profile"] in profiles else "quick")
    profile = st.selectbox("Profile", profiles, index=profiles.index(st.session_state[key]), key=key,
                           on_change=_reset_width,
                           help="smoke: seconds, on a data subset; quick: the CPU default; quick-bf16: quick trained "
                                "under bf16 autocast, for a CPU with native bf16 (AVX-512 BF16 or AMX); paper-cpu: "
                                "width 1.0 (the paper's model) in about an hour on such a CPU; paper: width 1.0, for "
                                "a GPU")
    key = ui.bind("model", lambda: v["model"] or "resnet18")
    choices = list(dict.fromkeys([*MODELS.names(), st.session_state[key]]))
    model = st.selectbox("Network", choices, index=choices.index(st.session_state[key]), key=key,
                         accept_new_options=True,
                         help="a registered network, or one's own typed as path/to/file.py:ClassName or "
                              "package.module:factory (traced with torch.fx; see the README)")
    key = ui.bind("weights", lambda: v["weights"])
    weights = st.text_input("Trained weights (optional)", key=key, placeholder="path/to/weights.pt",
                            help="a state dict saved with torch.save, loaded with weights_only instead of training "
                                 "the base model; its sha256 joins the base model's id")
    key = ui.bind("width", lambda: ui.parse_float(v["width"], PROFILES.get(profile).width, MIN_UI_WIDTH, MAX_WIDTH))
    width = st.number_input("Width multiplier", min_value=MIN_UI_WIDTH, max_value=MAX_WIDTH, step=0.125,
                            format="%.4g", key=key, value=max(MIN_UI_WIDTH, st.session_state[key]),
                            help="channels times this (1.0 is the paper's ResNet18; 0.25 is the CPU default); a "
                                 "model of one's own without a width argument ignores it")
    local = ui.local_data(ui.Environment(profile, float(width)))
    options = {"": f"{local.name} (local)" if local is not None else "no local dataset"}
    for fp, name in ui.known_datasets():
        if local is None or fp != local.fingerprint:
            options.setdefault(str(fp), f"{name} ({str(fp)[:10]}…, results only)")
    key = ui.bind("data", lambda: v["data"] if v["data"] in options else "")
    if st.session_state[key] not in options:
        st.session_state[key] = ""
    data_fp = st.selectbox("Dataset", list(options), index=list(options).index(st.session_state[key]), key=key,
                           format_func=options.get,
                           help="the local dataset ($COINFER_DATA or cache/data/), or one whose rows the results "
                                "store holds (its figures can be viewed; jobs need the data here)")
    st.markdown("### Edge environment")
    device = _device_picker("device")
    key = ui.bind("memory", lambda: v["memory"] if v["memory"] in MEMORY_FIGURES else "model")
    memory = st.selectbox("Device memory counted as", list(MEMORY_FIGURES),
                          index=list(MEMORY_FIGURES).index(st.session_state[key]), key=key,
                          format_func=ui.MEMORY_LABELS.get,
                          help="what must fit in the device's memory: the profile's parameters + largest activations, "
                               "or the peak resident memory of a process that loads the device part and runs one "
                               "image, measured per row with `python -m engine footprint` (the model's figure where "
                               "a row has none)")
    device = dataclasses.replace(device, memory_figure=memory)
    server = _device_picker("server")
    if current == "latency":  # that page draws the slider beside its chart, where moving it reruns only the chart
        rate_kbps = ui.view_rate_kbps()
        st.caption("Link rate: set on this page, above the chart")  # no value here: the page's fragment moves it
    else:
        rate_kbps = ui.rate_control()
    delay_ms = ui.delay_input()
    key = ui.bind("drop", lambda: ui.parse_float(v["drop"], DEFAULT_ACCURACY_DROP * 100, -1e-9, 10.0))
    drop = st.slider("Accuracy drop allowed (points)", 0.0, 10.0, value=float(st.session_state[key]), step=0.5, key=key,
                     help="the accuracy threshold is the base model's validation accuracy minus this (the paper: "
                          "95 → 93 %); choices read each variant's validation accuracy, the test accuracy only reports")
    v.update(profile=profile, model=model, weights=weights, width=f"{width:g}", data=data_fp, memory=memory,
             rate_kBps=ui.number_text(rate_kbps), delay_ms=ui.number_text(delay_ms), drop=f"{drop:g}")
    st.session_state["env"] = ui.Environment(profile, float(width), device, server, rate_kbps * 8e3, drop / 100,
                                             data_fp, delay_s=delay_ms / 1e3, model=model, weights=weights.strip())

if from_url and current == "plane" and v["page"] in pages and v["page"] != "plane":
    st.switch_page(pages[v["page"]], query_params={k: x for k, x in v.items() if x})  # a URL's ?page=
v["page"] = current
ui.sync_url()
page.run()
