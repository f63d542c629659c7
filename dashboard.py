"""coinfer dashboard: navigation and the shared sidebar (the edge environment). Run with `make run`.

The view state (page, profile, width, device and server, link rate, accuracy drop) lives in the URL's query
parameters, so a copied URL reopens the same view."""

from __future__ import annotations

import math

import streamlit as st

from engine.config import PROFILES
from engine.latency import DEVICES, DeviceProfile
from engine.units import format_rate
from ui import Environment

st.set_page_config(page_title="coinfer", page_icon=":material/cell_tower:", layout="wide")

RATES_KBPS = [1, 2, 5, 10, 20, 40, 70, 100, 200, 500, 1000, 2000, 5000, 10000, 100000]  # kB/s, log-spaced


def _param(name: str, default: str) -> str:
    return st.query_params.get(name, default)


def _float_param(name: str, default: float) -> float:
    try:
        value = float(_param(name, str(default)))
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


def _device_picker(role: str, default: str) -> DeviceProfile:
    names = DEVICES.names()
    chosen = _param(role, default)
    preset = st.selectbox(f"{role.title()} preset", names, index=names.index(chosen) if chosen in names else 0,
                          format_func=lambda n: DEVICES.get(n).label or n, key=f"{role}_preset")
    base = DEVICES.get(preset)
    gflops = st.number_input(f"{role.title()} GFLOP/s", min_value=0.001, value=_float_param(
        f"{role}_gflops", base.flops_per_s / 1e9) if chosen == preset else base.flops_per_s / 1e9,
        format="%.4g", key=f"{role}_gflops_{preset}", help="effective FLOP/s of this side (2 FLOPs per MAC)")
    memory_mb = st.number_input(f"{role.title()} memory (MB)", min_value=0.001, value=_float_param(
        f"{role}_mb", base.memory_bytes / 1e6) if chosen == preset else base.memory_bytes / 1e6,
        format="%.6g", key=f"{role}_mb_{preset}", help="a variant whose device part needs more is infeasible")
    st.query_params.update({role: preset, f"{role}_gflops": f"{gflops:g}", f"{role}_mb": f"{memory_mb:g}"})
    custom = not (math.isclose(gflops * 1e9, base.flops_per_s) and math.isclose(memory_mb * 1e6, base.memory_bytes))
    label = f"{base.label or preset}{' (edited)' if custom else ''}"
    return DeviceProfile(preset, gflops * 1e9, memory_mb * 1e6, label)


with st.sidebar:
    st.markdown("### Model")
    profile_names = PROFILES.names()
    chosen_profile = _param("profile", "quick")
    profile = st.selectbox("Profile", profile_names,
                           index=profile_names.index(chosen_profile) if chosen_profile in profile_names else 1,
                           help="smoke: seconds, on a data subset; quick: CPU default; paper: width 1.0, for a GPU")
    width = st.number_input("Width multiplier", min_value=0.0625, max_value=2.0,
                            value=_float_param("width", PROFILES.get(profile).width), step=0.125, format="%.4g",
                            help="1.0 is the paper's ResNet18; 0.25 is the CPU default")
    st.markdown("### Edge environment")
    device = _device_picker("device", "pi3")
    server = _device_picker("server", "rtx2080ti")
    rate_default = _float_param("rate_kBps", 40.0)
    rate_kbps = st.select_slider("Link rate", options=RATES_KBPS,
                                 value=min(RATES_KBPS, key=lambda r: abs(math.log(r / rate_default))),
                                 format_func=lambda r: format_rate(r * 8e3))
    drop = st.slider("Accuracy drop allowed (points)", 0.0, 10.0, _float_param("drop", 2.0), 0.5,
                     help="a variant counts when its test accuracy is at least the base model's minus this")
    st.query_params.update(profile=profile, width=f"{width:g}", rate_kBps=f"{rate_kbps:g}", drop=f"{drop:g}")
    st.session_state["env"] = Environment(profile, float(width), device, server, rate_kbps * 8e3, drop / 100)

page = st.navigation([
    st.Page("pages/plane.py", title="Trade-off plane", icon=":material/scatter_plot:", default=True),
    st.Page("pages/latency.py", title="Latency vs rate", icon=":material/timer:"),
])
page.run()
