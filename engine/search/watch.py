"""Watching a study while it runs: its trials read from the studies' database without creating or changing anything
(`open_storage`, `read_study`), and what a page draws from them (pure): the trial table, the best configuration's
latency terms, the front over the trials, the best latency against charged worker minutes with the results store's
best as a reference, and Optuna's own views where there are enough finished trials for them.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from engine.errors import UserError, one_line
from engine.knobs import knob_text
from engine.latency import PROPAGATION_COLUMN
from engine.pareto import best_variant
from engine.search.objective import OBJECTIVES, Environment
from engine.search.pruner import THRESHOLD_ATTR
from engine.search.space import ENDPOINT
from engine.search.study import best_trial, storage_path, trial_table

STATES = {"complete": "✅ complete", "pruned": "✂️ pruned", "fail": "❌ failed", "running": "▶️ running",
          "waiting": "⏳ waiting"}
INTERRUPTED = "⏸️ interrupted"  # a running trial of a study no process runs: resuming the study picks it up
MIN_COMPLETE_FOR_VIEWS = 3  # finished trials with choices that Optuna's importance and parallel views need
READ_TIMEOUT_S = 5.0  # how long a read waits for the search's writes (SQLite)


@dataclass(frozen=True)
class StudyView:
    """A study as read: its name, objective ("latency" or "front"), config (the `config` user attribute), validation
    threshold (None until known) and trials in order."""

    name: str
    objective: str
    config: dict[str, Any]
    threshold: float | None
    trials: list[FrozenTrial] = field(default_factory=list)


def open_storage(cache: Path | None = None) -> optuna.storages.RDBStorage | None:
    """The studies' database, opened to read: None when there is none yet (nothing is created); a UserError in one
    line when the file cannot be read."""
    path = storage_path(cache)
    if not path.exists():
        return None
    try:
        return optuna.storages.RDBStorage(f"sqlite:///{path}", skip_table_creation=True,
                                          engine_kwargs={"connect_args": {"timeout": READ_TIMEOUT_S}})
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors of a damaged file, in one line
        raise UserError(f"the studies file {path.name} cannot be read ({one_line(exc)}): move it away to start "
                        "afresh") from None


def read_study(storage: optuna.storages.BaseStorage, name: str) -> StudyView | None:
    """The study `name` and its trials; None when the database holds no such study."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged or locked file, in one line
        raise UserError(f"the studies file cannot be read ({one_line(exc)})") from None
    try:
        attrs = storage.get_study_user_attrs(study_id)
        directions = storage.get_study_directions(study_id)
        trials = storage.get_all_trials(study_id, deepcopy=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"study {name} cannot be read ({one_line(exc)})") from None
    config = attrs.get("config") if isinstance(attrs.get("config"), dict) else {}
    objective = config.get("objective") if config.get("objective") in OBJECTIVES else (
        "latency" if len(directions) == 1 else "front")
    threshold = attrs.get(THRESHOLD_ATTR)
    return StudyView(name, str(objective), config,
                     float(threshold) if isinstance(threshold, int | float) else None, list(trials))


# -- tables --------------------------------------------------------------------------------------------------------


def trials_frame(trials: Iterable[FrozenTrial], live: bool = True) -> pd.DataFrame:
    """`trial_table` for a page: the state marked (`STATES`), the knobs as text, the charged minutes, and whether each
    trial may be chosen (`eligible`: complete and meeting its constraints; pruned and failed trials never are).

    Args:
        trials: the study's trials; live: whether a process runs the study (else its running trials are marked as
            interrupted: the next run picks them up).
    """
    table = trial_table(trials)
    if table.empty:
        return table
    table = table.copy()
    table["finished"] = table["state"].isin(["complete", "pruned", "fail"])
    table["eligible"] = (table["state"] == "complete") & table["feasible"].map(
        lambda f: isinstance(f, bool | np.bool_) and bool(f))
    marks = STATES if live else {**STATES, "running": INTERRUPTED}
    table["state"] = table["state"].map(lambda s: marks.get(s, s))
    table["knobs"] = table["knobs"].map(lambda k: knob_text(k) if isinstance(k, dict) else "")
    table["charged_minutes"] = pd.to_numeric(table["charged_s"], errors="coerce") / 60
    for column in ("latency", "forecast", "validation", "test", "bits", "device_flops"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def best_latency_curve(table: pd.DataFrame) -> pd.DataFrame:
    """The lowest latency among the trials that may be chosen so far, against the charged worker minutes so far, one
    point per finished trial (from `trials_frame`'s columns; any objective: a front study's trials carry their
    latency too). Empty before a trial has finished."""
    if table.empty:
        return pd.DataFrame(columns=["number", "worker_minutes", "best_latency"])
    finished = table[table["finished"]]
    best, rows = math.inf, []
    for r in finished.itertuples():
        if r.eligible and isinstance(r.latency, float) and math.isfinite(r.latency):
            best = min(best, r.latency)
        rows.append({"number": r.number, "worker_minutes": r.worker_minutes,
                     "best_latency": best if math.isfinite(best) else np.nan})
    return pd.DataFrame(rows, columns=["number", "worker_minutes", "best_latency"])


def best_row(trials: Sequence[FrozenTrial]) -> dict[str, Any] | None:
    """The best trial that may be chosen (`best_trial`), with its knobs as text; None when none may."""
    best = best_trial(trials)
    if best is None:
        return None
    return {**best, "knobs_text": knob_text(best.get("knobs")) if isinstance(best.get("knobs"), dict) else ""}


def breakdown(best: dict[str, Any], delay_s: float = 0.0) -> pd.DataFrame:
    """The best trial's latency terms as a one-row table for `engine.figures.latency_breakdown_figure`."""
    row = {"method": best.get("method"), "split": best.get("split"), "id": best.get("variant_id"),
           "t_device": best.get("t_device"), "t_transmit": best.get("t_transmit"), "t_server": best.get("t_server")}
    if delay_s:
        row[PROPAGATION_COLUMN] = delay_s
    return pd.DataFrame([row])


def store_reference(rows: pd.DataFrame, table: pd.DataFrame, env: Environment,
                    threshold: float | None) -> pd.Series | None:
    """The results store's best configuration for the environment (`engine.pareto.best_variant` with the validation
    threshold) among the base model's rows that this study's own jobs did not measure: what the grid and other
    studies had found. None when no such row qualifies."""
    if rows.empty:
        return None
    own = set(table.loc[table["source"] == "job", "variant_id"].dropna()) if not table.empty else set()
    others = rows[~rows["id"].isin(own)]
    if others.empty:
        return None
    return best_variant(others, env.device, env.server, env.rate_bps, threshold, delay_s=env.delay_s)


# -- figures -------------------------------------------------------------------------------------------------------


def front_figure(table: pd.DataFrame, height: int = 420) -> go.Figure:
    """Device FLOPs against bits per image of the complete trials (log axes), coloured by validation accuracy; the
    trials that may be chosen are filled circles, the others open ones. Each point's customdata is its variant id."""
    fig = go.Figure()
    done = table[(table["state"] == STATES["complete"]) & (table["device_flops"] > 0) & (table["bits"] > 0)] \
        if not table.empty else table
    if done.empty:
        return _front_layout(fig, height)
    known = done["validation"].dropna()
    low = float(known.min()) if len(known) else 0.0
    high = max(float(known.max()) if len(known) else 1.0, low + 1e-6)
    for eligible, name, symbol in ((True, "meets the threshold", "circle"), (False, "below it or too big", "x-open")):
        part = done[done["eligible"] == eligible]
        if part.empty:
            continue
        fig.add_trace(go.Scatter(
            x=part["device_flops"], y=part["bits"], mode="markers", name=name, customdata=part["variant_id"],
            text=[f"#{n} {m} @ {s}<br>{k}<br>validation {v:.2%}" for n, m, s, k, v in zip(
                part["number"], part["method"], part["split"], part["knobs"], part["validation"], strict=True)],
            hovertemplate="%{text}<br>device %{x:.3s}FLOPs · %{y:.4g} bits<extra></extra>",
            marker={"symbol": symbol, "size": 10, "color": part["validation"].fillna(low), "colorscale": "Viridis",
                    "cmin": low, "cmax": high, "showscale": eligible,
                    "colorbar": {"title": {"text": "validation"}, "tickformat": ".0%"}, "line": {"width": 1.5}}))
    return _front_layout(fig, height)


def _front_layout(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(height=height, xaxis={"type": "log", "title": {"text": "device FLOPs per image"}},
                      yaxis={"type": "log", "title": {"text": "bits per image"}},
                      legend={"orientation": "h", "y": -0.2}, margin={"t": 10})
    return fig


def progress_figure(curve: pd.DataFrame, reference_s: float | None = None, height: int = 340) -> go.Figure:
    """The best latency so far against charged worker minutes (a step line), with the results store's best as a
    dashed horizontal line."""
    fig = go.Figure(go.Scatter(x=curve["worker_minutes"], y=curve["best_latency"], mode="lines+markers",
                               line={"shape": "hv"}, name="search: best so far", customdata=curve["number"],
                               hovertemplate="after trial #%{customdata}: %{y:.4g} s at %{x:.3g} worker min"
                                             "<extra></extra>"))
    if reference_s is not None and math.isfinite(reference_s):
        fig.add_hline(y=reference_s, line_dash="dash", line_color="#d62728",
                      annotation_text=f"results store's best {reference_s:.4g} s", annotation_position="top left")
    fig.update_layout(height=height, xaxis={"title": {"text": "charged worker minutes"}, "rangemode": "tozero"},
                      yaxis={"type": "log", "title": {"text": "best latency (s)"}}, showlegend=False,
                      margin={"t": 10})
    return fig


def optuna_views(trials: Sequence[FrozenTrial], objective: str) -> list[tuple[str, go.Figure | None, str]]:
    """Optuna's parallel-coordinate and parameter-importance views of the finished trials, as (title, figure, note):
    the figure is None, and the note says why in one line, where there are too few complete trials with choices or
    Optuna cannot draw one. A front study's views follow the validation accuracy; the end points (reference trials,
    with no split to choose) are left out."""
    trials = [t for t in trials if ENDPOINT not in t.params]  # the reference trials choose no split
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.params]
    titles = ("Parallel coordinates", "Parameter importances")
    if len(done) < MIN_COMPLETE_FOR_VIEWS:
        note = (f"Optuna's views need {MIN_COMPLETE_FOR_VIEWS} complete trials; {len(done)} so far.")
        return [(title, None, note) for title in titles]
    quiet, level = logging.getLogger("optuna"), logging.getLogger("optuna").level
    quiet.setLevel(logging.WARNING)  # no "a new study created in memory" line on every look
    try:
        study = optuna.create_study(directions=list(OBJECTIVES.get(objective, ("minimize",))))
    finally:
        quiet.setLevel(level)
    study.add_trials([t for t in trials if t.state.is_finished()])
    if objective == "front":
        kwargs: dict[str, Any] = {"target": lambda t: t.values[2], "target_name": "validation accuracy"}
    else:
        kwargs = {"target_name": "latency (s)"}
    out = []
    for title, plot in zip(titles, (optuna.visualization.plot_parallel_coordinate,
                                    optuna.visualization.plot_param_importances), strict=True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = plot(study, **kwargs)
            out.append((title, fig, ""))
        except Exception as exc:  # noqa: BLE001 - Optuna refuses some studies (one value, no varying choice)
            out.append((title, None, f"Optuna cannot draw this yet: {one_line(exc)}"))
    return out
