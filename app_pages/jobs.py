"""Jobs: start a profile's sweep or single variants, follow their progress (with ETA), cancel and retry them.
The list refreshes itself every two seconds, so new jobs and rows appear without reloading the page."""

from __future__ import annotations

import time

import streamlit as st

from app import ui
from engine import queue as jobq
from engine import sweep
from engine.errors import UserError
from engine.knobs import knob_text, parse_knobs
from engine.models import split_names
from engine.units import format_seconds

SHOWN = 40  # jobs listed at most (active first, then the latest finished)
ICONS = {"queued": "⏳", "running": "▶️", "cancelling": "⏹️", "done": "✅", "failed": "❌", "cancelled": "🚫"}

env = ui.environment()
ui.sync_url()  # the view survives page switches (see ui.view)
st.title("Jobs")
data = ui.local_data(env)
_, base = ui.page_base(env)
st.caption(f"base model `{base.id}` · profile **{env.profile}** · width **{base.width:g}** · jobs run in detached "
           "`python -m engine worker` processes; the queue lives in the cache, so closing the page stops nothing")

with st.expander("Start jobs", expanded=True):
    ui.emulated_bf16_warning(base)
    if data is None:
        st.warning("Jobs need the dataset on this machine: the sidebar's dataset is known only from the results "
                   "store. Set COINFER_DATA to it, or choose the local dataset.")
    profile_tab, variant_tab = st.tabs(["The profile's sweep", "Single variants"])
    with profile_tab:
        methods = st.multiselect("Methods", sweep.methods_in_order(), default=sweep.methods_in_order(),
                                 help="cheapest first; variants already in the results store are skipped")
        if st.button(f"Queue the {env.profile} sweep", type="primary", disabled=data is None or not methods,
                     help="then, as rows arrive, the crossed variants round by round (as `python -m engine sweep`)"):
            try:
                st.success(f"Queued {ui.start_sweep(env.profile, base, methods)} variant(s) not measured before; "
                           "the crossed variants follow as rows arrive.")
            except UserError as exc:
                st.error(str(exc))
        crossed = ui.crossed_variants(env.profile, base, methods)
        st.caption(f"{len(crossed)} crossed variant(s) follow from the rows measured so far: each `three_step` "
                   "snapshot that holds its threshold, and the unpruned split, with every coding the profile names "
                   "(what `python -m engine sweep` queues as rows arrive).")
        if crossed and st.button("Queue the crossed variants", disabled=data is None):
            queued, _ = sweep.submit(ui.job_queue(), crossed, ui.results_store())
            ui.run_queue()
            st.success(f"Queued {len(queued)} crossed variant(s).")
    with variant_tab:
        c1, c2, c3 = st.columns([1, 1, 2])
        method = c1.selectbox("Method", sweep.methods_in_order())
        inner = split_names(base.model)[1:-1]  # the default: the paper's conv4_x, or the like of another model
        splits = c2.multiselect("Splits", split_names(base.model, coarse_only=False), default=inner[-2:-1])
        defaults = sweep.default_knobs(method, splits[0], base) if splits else {}
        knobs = c3.text_input("Knobs (optional)", placeholder=knob_text(defaults) if defaults else "bits=4",
                              help="NAME=VALUE pairs, values as JSON; the method's defaults (shown greyed) fill "
                                   "the rest, and a knob it does not have is refused")
        if st.button("Queue", disabled=data is None or not splits):
            try:
                parsed = parse_knobs(knobs)
                planned = [sweep.one_variant(method, s, env.profile, base, ui.data_path(), **parsed) for s in splits]
                ui.start_jobs([p.spec for p in planned], [p.priority for p in planned])
                st.success(f"Queued {len(planned)} variant(s): {', '.join(p.id for p in planned)}")
            except UserError as exc:
                st.error(str(exc))


def _cancel(job_id: str) -> None:
    try:
        ui.job_queue().cancel(job_id)
    except UserError as exc:
        st.session_state["_job_error"] = str(exc)


def _retry(job_id: str) -> None:
    try:
        ui.job_queue().retry(job_id)
        ui.run_queue()
    except UserError as exc:
        st.session_state["_job_error"] = str(exc)


@st.fragment(run_every=2.0)
def job_list(base_id: str | None) -> None:
    """The jobs, active first: a progress bar with ETA, cancel or retry, the error of a failed one; a started sweep's
    next round of crossed variants is queued when its jobs are done."""
    ui.follow_sweep(base)
    queue = ui.job_queue()
    jobs = queue.jobs(base_id=base_id)
    if message := st.session_state.pop("_job_error", None):
        st.error(message)
    counts = {s: sum(j.status == s for j in jobs) for s in jobq.STATUSES}
    workers = queue.live_workers()
    st.markdown(" · ".join(f"{ICONS[s]} {n} {s}" for s, n in counts.items() if n) or "No jobs yet.")
    st.caption(f"{len(workers)} worker(s) alive")
    if (reason := queue.paused()) is not None:
        st.info(f"The queue is paused: {reason}. Running jobs go on; queued ones wait.")
        st.button("Resume the queue", on_click=ui.resume_queue)
    elif counts["queued"]:
        c1, c2, _ = st.columns([1, 1, 4])
        if not workers and c1.button("Start a worker"):
            jobq.ensure_worker(queue)
        c2.button("Pause the queue", on_click=lambda: queue.pause("paused from the Jobs page"),
                  help="running jobs go on; queued ones wait, and no worker starts on its own")
    order = {"running": 0, "cancelling": 0, "queued": 1, "failed": 2}
    jobs = sorted(jobs, key=lambda j: (order.get(j.status, 3), -(j.finished_at or j.submitted_at)))
    now = time.time()
    for job in jobs[:SHOWN]:
        what = "dataset" if job.kind == "data" else f"{job.method} @ {job.split}"
        knobs = knob_text(job.spec.knobs)
        c1, c2, c3 = st.columns([5, 1, 1], vertical_alignment="center")
        with c1:
            head = f"{ICONS[job.status]} **{what}** {knobs} · `{job.id}` · {job.status}"
            if job.status in jobq.ACTIVE:
                eta = ui.eta_seconds(job.progress, job.started_at, now)
                st.progress(min(max(job.progress, 0.0), 1.0), text=f"{head} · {job.message}"
                            + (f" · ETA {format_seconds(eta)}" if eta is not None else ""))
            else:
                st.markdown(f"{head} · {job.message}")
            if job.status == "failed" and job.error:
                st.error(f"{job.error} (attempt {job.attempts} of {job.max_attempts})")
                if job.traceback:
                    with st.expander("Traceback"):
                        st.code(job.traceback, language="text")
        if job.status in ("queued", "running"):
            c2.button("Cancel", key=f"cancel_{job.id}", on_click=_cancel, args=(job.id,))
        if job.status in ("failed", "cancelled"):
            c3.button("Retry", key=f"retry_{job.id}", on_click=_retry, args=(job.id,))
    if len(jobs) > SHOWN:
        st.caption(f"… and {len(jobs) - SHOWN} more (`python -m engine jobs`)")


scope = st.radio("Show", ["this base model", "all jobs"], horizontal=True, key="jobs_scope")
job_list(base.id if scope == "this base model" else None)
