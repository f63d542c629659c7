"""Search: an Optuna study over split, pruning and coding for the sidebar's environment (`engine.search`), started as
a detached `python -m engine search` process and watched as its trials arrive; the best configuration so far can be
pinned on the Compare page or exported."""

from __future__ import annotations

import os
import signal
import time

import streamlit as st

from app import ui
from app.plotly_component import plotly_chart
from engine.errors import UserError
from engine.figures import latency_breakdown_figure
from engine.pareto import validation_threshold
from engine.paths import cache_dir
from engine.search import launch, watch
from engine.units import format_bits, format_flops, format_rate, format_seconds

STOPPED = (130, -signal.SIGTERM)  # exit statuses of a search asked to stop (SIGTERM: "interrupted")
OBJECTIVES = {"latency": "latency: the fastest configuration within the threshold",
              "front": "front: device FLOPs, bits per image and validation accuracy"}

_EXPORT = "_search_export"
if st.session_state.pop(_EXPORT, False):  # "Export it": a switch from a fragment's run leaves the new page blank
    st.switch_page("app_pages/export.py")

env = ui.environment()
ui.sync_url()  # the view survives page switches (see ui.view)
st.title("Search")
data, base = ui.page_base(env)
rows = ui.results(base)

c1, c2, c3, c4 = st.columns([3, 2, 2, 1])
objective = c1.radio("Objective", list(OBJECTIVES), format_func=OBJECTIVES.get, key="search_objective",
                     help="each objective is its own study; choices read validation accuracy, the test accuracy only "
                          "reports")
by_trials = c2.radio("Budget in", ["worker minutes", "trials"], key="search_budget_kind", horizontal=True,
                     help="counted over the study's whole life: resuming a study that has spent its budget needs a "
                          "larger one; a configuration measured before is charged what it cost to measure") == "trials"
if by_trials:
    amount = c3.number_input("Trials", min_value=1, max_value=10_000, value=20, step=5, key="search_trials")
else:
    amount = c3.number_input("Worker minutes", min_value=1.0, max_value=100_000.0, value=45.0, step=15.0,
                             key="search_minutes")
workers = int(c4.number_input("Workers", min_value=1, max_value=max(1, os.cpu_count() or 1), value=1,
                              key="search_workers", help="local worker processes of the study's jobs"))
request = ui.search_request(env, objective, None if by_trials else float(amount), int(amount) if by_trials else None,
                            workers)
try:
    study_env = request.environment()
    name = request.config(base).name
except UserError as exc:
    st.error(str(exc))
    st.stop()
can_start = data is not None and data.fingerprint == base.dataset
st.caption(f"study `{name}` · {objective} at **{format_rate(study_env.rate_bps)}**"
           f"{f' + {study_env.delay_s * 1e3:g} ms delay' if study_env.delay_s else ''} · device "
           f"**{study_env.device.describe()}** · server **{study_env.server.describe()}** · accuracy drop "
           f"{request.drop * 100:g} points below the base model's validation accuracy · base model `{base.id}` · "
           "it runs in a detached `python -m engine search` process: closing the page stops nothing")
if not can_start:
    st.warning("A search needs the dataset on this machine: the sidebar's dataset is known only from the results "
               "store. Set COINFER_DATA to it, or choose the local dataset.")


def _start() -> None:
    """The start button's callback (before the page is drawn again, so that it shows the study running)."""
    try:
        launch.start(request, name, cache_dir())
    except UserError as exc:
        st.session_state["_search_refused"] = str(exc)


def _stop() -> None:
    launch.stop(name)
    time.sleep(0.5)  # its lock goes when it has shut its workers down; the next look usually sees it stopped


def _controls(started: bool) -> bool:
    """Start (or resume) and stop buttons, and what the last start left behind; whether a process runs the study."""
    active = launch.running(name)
    record = launch.last_run(name)
    a, b, _ = st.columns([2, 1, 3])
    a.button("Resume the study" if started else "Start the study", type="primary", disabled=active or not can_start,
             key="search_start", on_click=_start,
             help="runs `python -m engine search " + " ".join(request.argv()[1:]) + "`; refused while the study runs")
    b.button("Stop", disabled=not active, key="search_stop", on_click=_stop,
             help="its workers give their jobs back to the queue; starting it again resumes it")
    if refused := st.session_state.pop("_search_refused", None):
        st.warning(refused)
    if active:
        since = time.strftime("%H:%M:%S", time.localtime(record["started_at"])) if record else "?"
        st.info(f"Running since {since} (pid {record.get('pid') if record else '?'}): "
                + (launch.log_tail(record, 1) or "starting…"))
    elif record and record.get("returncode") not in (None, 0, *STOPPED):
        st.error(f"The last run ended with status {record['returncode']}: "
                 f"{launch.log_tail(record, 1) or 'see its log'} (log: `{record.get('log')}`)")
    elif record:  # finished or stopped (its exit status is unknown when the dashboard restarted meanwhile)
        st.caption("Last run: " + (launch.log_tail(record, 3).replace("\n", " · ") or "no output"))
    return active


def _best(best: dict, threshold: float | None, objective: str) -> None:
    """The best configuration so far, its latency terms, and the buttons that pin or export it."""
    vid = str(best.get("variant_id"))
    st.subheader("Best configuration so far")
    st.success(f"Trial **#{best['number']}: {best['method']} @ {best['split']}** (`{vid}`"
               + (f"; {best['knobs_text']}" if best["knobs_text"] else "") + f"): latency "
               f"**{format_seconds(best['latency'])}** ({format_seconds(best['t_device'])} device + "
               f"{format_seconds(best['t_transmit'])} link"
               + (f" + {format_seconds(study_env.delay_s)} delay" if study_env.delay_s else "")
               + f" + {format_seconds(best['t_server'])} server), validation **{ui.percent(best.get('val_accuracy'))}**"
               f" (test {ui.percent(best.get('test_accuracy'))}), {format_bits(best['bits'])} per image, "
               f"{format_flops(best['device_flops'])} on the device.")
    ui.chart(latency_breakdown_figure(watch.breakdown(best, study_env.delay_s)), "search_breakdown")
    a, b, c = st.columns([1, 1, 2])
    pinned = vid in ui.pinned_ids()
    a.button("Pin it on Compare", key="search_pin", on_click=ui.pin_variant, args=(vid,), disabled=pinned,
             help="added to the Compare page's pins (at most four: the oldest goes)")
    if b.button("Export it", key="search_export", help="the Export page, with this configuration selected"):
        ui.set_view(sel=vid)
        st.session_state[_EXPORT] = True
        st.rerun(scope="app")  # the page switches outside this fragment (see the top of the page)
    if pinned:
        c.page_link("app_pages/compare.py", label="Pinned: compare it", icon="⚖️")
    _seeds(best)
    how = ("the lowest latency" if objective == "latency" else
           "the highest validation accuracy on the front of device FLOPs, bits and validation accuracy")
    need = f"validation accuracy ≥ {ui.percent(threshold)}" if threshold is not None else "validation accuracy"
    st.caption(f"Chosen by {how} among the trials that meet {need} and fit the device's memory; the test accuracy "
               "only reports.")


SEEDS = 3  # the best configuration's rows wanted over training seeds, its own included


def _seeds(best: dict) -> None:
    """The spread of the best configuration over training seeds (the same base model), and the button that queues
    its replicates (`engine.search.study.Search.replicates`, the command's `--seeds`)."""
    from engine.config import VariantConfig
    from engine.methods import check_variant
    from engine.queue import JobSpec
    from engine.report import replicate_spread

    if best.get("method") == "original" or not isinstance(best.get("knobs"), dict):
        return  # an end point or `original`: nothing of it is seeded
    same = rows[(rows["method"] == best["method"]) & (rows["split"] == best["split"])] if not rows.empty else rows
    spread = replicate_spread(same.to_dict("records"), str(best.get("variant_id")))
    if spread is not None and spread["n"] > 1:
        val, test = (f"{ui.percent(spread.get(f'{c}_mean'))} ± {ui.percent(spread.get(f'{c}_std'))}"
                     for c in ("deployed_val_accuracy", "accuracy"))
        st.caption(f"Over {spread['n']} training seeds: validation {val}, test {test} (the base model stays; a "
                   "thread count alone moves accuracy by about half a point).")
    have = 0 if spread is None else int(spread["n"])
    if have >= SEEDS:
        return
    variant = VariantConfig.make(str(best["method"]), str(best["split"]), base, **best["knobs"])
    if st.button(f"Re-run it with {SEEDS - 1} more seeds", key="search_seeds",
                 help="queues the same configuration with other training seeds (pruning run and encoder); its mean "
                      "and spread show here as they arrive"):
        try:
            specs = [JobSpec.for_variant(variant.replicate(k), env.profile, ui.data_path()) for k in range(1, SEEDS)]
            for spec in specs:
                check_variant(spec.variant(), env.profile)
        except UserError as exc:
            st.error(f"its replicates cannot be queued: {exc}")
            return
        ui.start_jobs(specs)
        st.toast(f"queued {len(specs)} replicate(s) of {variant.id}")


@st.fragment(run_every=2.0)
def watch_study() -> None:
    """Everything that changes as trials arrive: rerun every two seconds (cheap: the study is read again only when
    its database changes)."""
    try:
        view = ui.search_study(name)
    except UserError as exc:
        _controls(False)
        st.error(str(exc))
        return
    active = _controls(view is not None and bool(view.trials))
    if view is None or not view.trials:
        st.info("No study for this environment yet: start one above. Its trials appear here as they finish.")
        return
    table = watch.trials_frame(view.trials, live=active)
    states = table["state"].value_counts()
    spent = float(table["charged_minutes"].sum(skipna=True))
    st.markdown(" · ".join(f"{n} {s}" for s, n in states.items()) + f" · **{spent:.1f}** worker minutes charged")

    best = watch.best_row(view.trials)
    if best is None:
        st.info("No trial meets the accuracy threshold and fits the device yet: give the study more budget, or allow "
                "a larger accuracy drop in the sidebar (another study).")
    else:
        _best(best, view.threshold, view.objective)

    st.subheader("Trials")
    shown = table[["number", "state", "method", "split", "knobs", "validation", "test", "latency", "forecast", "bits",
                   "device_flops", "charged_minutes", "eligible", "source", "error"]]
    st.dataframe(shown, hide_index=True, column_config={
        "number": st.column_config.NumberColumn("#"),
        "validation": st.column_config.NumberColumn("validation", format="percent"),
        "test": st.column_config.NumberColumn("test", format="percent"),
        "latency": st.column_config.NumberColumn("latency", format="%.4g s"),
        "forecast": st.column_config.NumberColumn(
            "forecast", format="%.4g s", help="the latency the planner forecast before the trial was measured "
                                             "(empty: a trial it did not propose)"),
        "bits": st.column_config.NumberColumn("bits / image", format="%.4g"),
        "device_flops": st.column_config.NumberColumn("device FLOPs", format="%.4g"),
        "charged_minutes": st.column_config.NumberColumn("charged min", format="%.2f"),
        "eligible": st.column_config.CheckboxColumn("may be chosen",
                                                    help="complete, meets the threshold and fits the device"),
    })

    left, right = st.columns(2)
    with left:
        st.markdown("**Front over the trials**")
        ui.chart(watch.front_figure(table), "search_front")
        hidden = int(((table["state"] == watch.STATES["complete"]) & ~(table["device_flops"] > 0)).sum())
        if hidden:
            st.caption(f"{hidden} complete trial(s) with no device FLOPs (the server-only end point) are off the log "
                       "axis.")
    with right:
        st.markdown("**Best latency against charged worker minutes**")
        try:
            need = validation_threshold(rows, request.drop) if not rows.empty else None
            reference = watch.store_reference(rows, table, study_env, need)
        except UserError as exc:
            reference = None
            st.caption(str(exc))
        plotly_chart(watch.progress_figure(watch.best_latency_curve(table),
                                           None if reference is None else float(reference["latency"])),
                     "search_progress")
        if rows.empty:
            st.caption("No rows of this base model in the results store: no reference line.")
        elif reference is None:
            st.caption("No row of the results store outside this study meets the threshold here: no reference line.")
        else:
            st.caption(f"Dashed: the results store's best for this environment outside this study, "
                       f"{reference['method']} @ {reference['split']} (`{reference['id']}`), what a grid sweep found.")

    with st.expander("Optuna's views", expanded=False):
        for title, fig, note in ui.search_views(name, ui.search_version(), tuple(view.trials), view.objective):
            st.markdown(f"**{title}**")
            if fig is None:
                st.caption(note)
            else:
                plotly_chart(fig, f"search_optuna_{title}")


watch_study()
