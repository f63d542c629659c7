"""The communication-computation plane (Shao & Zhang 2020, Fig. 1): device FLOPs against bits per image."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from engine import jobs as jobq
from engine import sweep
from engine.config import PROFILES
from engine.errors import UserError
from engine.figures import plane_figure
from engine.models import split_names
from engine.paths import cache_dir
from engine.profile import profile_model
from engine.store import ResultsStore
from engine.train import make_model
from ui import environment


@st.cache_resource(show_spinner="Loading the dataset…")
def _data(profile: str, data_env: str | None, cache: str, seed: int = 0):  # noqa: ANN202
    """The dataset cut to the profile; keyed by where the data and cache are, so a changed location reloads."""
    from engine.data import load_data, subset

    prof = PROFILES.get(profile)
    data = load_data(data_env, cache_dir=Path(cache), download=False)
    if prof.train_limit or prof.test_limit:
        data = subset(data, prof.train_limit, prof.test_limit, seed=seed)
    return data


@st.cache_data(show_spinner="Profiling the splits…")
def _profile(profile: str, width: float) -> tuple[pd.DataFrame, float]:
    from engine.data import mean_png_bits

    data = _data(profile, *_data_location())
    base = PROFILES.get(profile).base_config(data.fingerprint, width=width)
    rows = profile_model(make_model(base, data), (data.channels, *data.image_size), data.num_classes,
                         split_names(coarse_only=True))
    table = pd.DataFrame(rows).assign(method="profile", id=None)
    return table, mean_png_bits(data, cache_dir())


def _data_location() -> tuple[str | None, str]:
    return os.environ.get("COINFER_DATA") or None, str(cache_dir())


env = environment()
st.title("Communication-computation plane")
try:
    data = _data(env.profile, *_data_location())
except UserError as exc:
    st.error(str(exc))
    queue = jobq.JobQueue()
    spec = jobq.JobSpec.for_data(None)
    download = queue.get(spec.id)
    downloading = download is not None and download.status in jobq.ACTIVE
    if downloading:
        st.progress(download.progress, text="Downloading CIFAR-10 with torchvision…")
    elif download is not None and download.status == "failed":
        st.warning(f"The download failed: {download.error}")
    if st.button("Download CIFAR-10 (170 MB, needs internet)", disabled=downloading):
        queue.submit([spec], requeue_finished=True)
        jobq.ensure_worker(queue)
        st.rerun()
    st.stop()
base = PROFILES.get(env.profile).base_config(data.fingerprint, width=env.width)
st.caption(f"dataset **{data.name}** ({len(data.test_y):,} test images) · ResNet18 width **{base.width:g}** · "
           f"profile **{env.profile}** · base model `{base.id}`")

profile_table, png_bits = _profile(env.profile, base.width)
results = ResultsStore().table(method="original")
if not results.empty:
    results = results[results["base_id"] == base.id]
queue = jobq.JobQueue()


def _original_jobs() -> list[jobq.Job]:
    return queue.jobs(base_id=base.id, method="original")


@st.fragment(run_every=2.0)
def _job_progress(shown: frozenset[str]) -> None:
    """Progress of this base model's `original` jobs, read from the job table; a new row redraws the page."""
    jobs = _original_jobs()
    if not jobs:
        return
    active = [j for j in jobs if j.status in jobq.ACTIVE]
    done = [j for j in jobs if j.status == "done"]
    if active:
        fraction = sum(1.0 if j.finished else j.progress for j in jobs) / len(jobs)
        running = [j for j in active if j.status in ("running", "cancelling")]
        text = f"{len(done)}/{len(jobs)} splits measured · " + (
            f"{running[0].split}: {running[0].message}" if running else "waiting for a worker")
        st.progress(min(fraction, 1.0), text=text)
        if not running and not queue.live_workers():
            jobq.ensure_worker(queue)
    for job in jobs:
        if job.status == "failed":
            st.error(f"`original` at {job.split} failed: {job.error} (details: `python -m engine jobs show "
                     f"{job.id}`)")
    store = ResultsStore()
    if any(j.id not in shown and j.id in store for j in done):  # a new row: redraw the plane
        st.rerun()


if results.empty:
    st.info("No measured variants for this base model yet. The plane shows the untrained profile: device FLOPs "
            "and the 8-bit size of each split's feature (no coding, no accuracy). Train the base model and measure "
            "the `original` method to see real accuracies and Huffman-coded bits.")
    running = any(j.status in jobq.ACTIVE for j in _original_jobs())
    if st.button("Train the base model and measure `original`", type="primary", disabled=running):
        planned = sweep.plan(env.profile, base, os.environ.get("COINFER_DATA") or None, methods=["original"],
                             splits=split_names())
        queue.submit([p.spec for p in planned], [p.priority for p in planned], requeue_finished=True)
        jobq.ensure_worker(queue)
        st.rerun()
    _job_progress(frozenset())
    fig = plane_figure(profile_table, png_bits, bits_column="bits_8bit")
    st.plotly_chart(fig, key="plane")
    st.dataframe(profile_table[["split", "device_flops", "server_flops", "device_memory_bytes", "feature_shape",
                                "bits_8bit"]], hide_index=True)
else:
    bits_column = "bits_ideal" if st.toggle("Ideal bits (model entropy) instead of the actual bitstream") \
        else "bits_actual"
    fig = plane_figure(results, png_bits, bits_column=bits_column)
    st.plotly_chart(fig, key="plane")
    amplified = results[(results[bits_column] > png_bits) & (results["device_flops"] > 0)]["split"].tolist()
    if amplified:
        st.caption("Data amplification (feature larger than the PNG input): " + ", ".join(amplified))
    _job_progress(frozenset(results["id"]))
    cols = ["split", "accuracy", "device_flops", "server_flops", "device_memory_bytes", "bits_actual", "bits_ideal",
            "bits_raw", "id"]
    st.dataframe(results.sort_values("split_order")[cols], hide_index=True,
                 column_config={"accuracy": st.column_config.NumberColumn(format="percent")})
