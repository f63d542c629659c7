"""coinfer dashboard: navigation and the shared sidebar (profile, width, dataset). Run with `make run`."""

from __future__ import annotations

import streamlit as st

from engine.config import PROFILES

st.set_page_config(page_title="coinfer", page_icon="📡", layout="wide")

params = st.query_params
profile_names = PROFILES.names()
default_profile = params.get("profile", "quick")
if default_profile not in profile_names:
    default_profile = "quick"

with st.sidebar:
    st.markdown("### Environment")
    profile = st.selectbox("Profile", profile_names, index=profile_names.index(default_profile),
                           help="smoke: seconds, on a data subset; quick: CPU default; paper: width 1.0, for a GPU")
    try:
        default_width = float(params.get("width", PROFILES.get(profile).width))
    except ValueError:
        default_width = PROFILES.get(profile).width
    width = st.number_input("Width multiplier", min_value=0.0625, max_value=2.0, value=default_width, step=0.125,
                            format="%.4g", help="1.0 is the paper's ResNet18; 0.25 is the CPU default")
    st.query_params.update(profile=profile, width=f"{width:g}")
    st.session_state["env"] = {"profile": profile, "width": float(width)}

page = st.navigation([st.Page("pages/plane.py", title="Trade-off plane", icon="📈", default=True)])
page.run()
