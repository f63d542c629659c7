"""Shared state of the dashboard's pages: the view state mirrored in the URL, the environment from the sidebar, the
dataset, the base model config, its rows in the results store, and the job queue. Thin: what it computes comes
from engine/.

The view state (page, environment, selection, pins, axes) is a dict of strings in the session, written to the URL's
query parameters on every run. A new session (a reload, a copied URL) reads it from the URL; page switches, which
clear the query parameters, restore it from the session."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.plotly_component import figure_json, plotly_chart
from engine import exchange, sweep
from engine import queue as jobq
from engine.coding import NotTrained
from engine.config import BaseModelConfig, VariantConfig
from engine.data import ImageData
from engine.deploy.selection import row_config
from engine.errors import UserError
from engine.latency import DEVICES, DeviceProfile, Overheads
from engine.methods import METHODS
from engine.pareto import DEFAULT_ACCURACY_DROP, NO_VALIDATION, decision_accuracy, validation_threshold
from engine.paths import cache_dir
from engine.profiles import PROFILES
from engine.store import ResultsStore
from engine.units import format_rate

if TYPE_CHECKING:  # the search's modules (and Optuna) load when a page reads a study
    from engine.search.launch import SearchRequest
    from engine.search.watch import StudyView

T = TypeVar("T")

# Every key of the view state and its default; "" means "derived" (the profile's width, the preset's figures).
VIEW_DEFAULTS: dict[str, str] = {
    "page": "plane", "profile": "quick", "model": "resnet18", "weights": "", "width": "", "data": "",
    "device": "pi3", "device_gflops": "", "device_mb": "", "server": "rtx2080ti", "server_gflops": "",
    "server_mb": "", "rate_kBps": "40", "delay_ms": "0", "drop": f"{DEFAULT_ACCURACY_DROP * 100:g}",
    "sel": "", "pins": "", "bits": "actual", "below": "grey", "front": "overall", "splits": "", "overheads": "off",
    "memory": "model",
}
ENVIRONMENT_KEYS = ("profile", "model", "weights", "width", "data", "device", "device_gflops", "device_mb", "memory",
                    "server", "server_gflops", "server_mb", "rate_kBps", "delay_ms", "drop")
MEMORY_LABELS = {"model": "the model (parameters + activations)", "torchscript": "a TorchScript process (measured)",
                 "onnx": "an ONNX Runtime process (measured)"}
_MAX_PARAM = 2000  # characters of one query parameter kept from a URL
_VIEW = "_view"


# -- view state ---------------------------------------------------------------------------------------------


def view() -> dict[str, str]:
    """The view state of this session; on its first run, read from the URL's query parameters."""
    if _VIEW not in st.session_state:
        state = dict(VIEW_DEFAULTS)
        for key in VIEW_DEFAULTS:
            value = st.query_params.get(key)
            if isinstance(value, str):
                state[key] = value[:_MAX_PARAM]
        st.session_state[_VIEW] = state
        st.session_state["_from_url"] = True
    return st.session_state[_VIEW]


def take_from_url() -> bool:
    """Whether the view state was just read from the URL (the session's first run), once: later calls say False."""
    return bool(st.session_state.pop("_from_url", False))


def set_view(**values: object) -> None:
    """Change view keys (None or "" resets one to its default) and write the URL."""
    state = view()
    for key, value in values.items():
        if key not in VIEW_DEFAULTS:
            raise KeyError(key)
        state[key] = VIEW_DEFAULTS[key] if value is None or value == "" else str(value)
    sync_url()


def sync_url() -> None:
    """Write the whole view state to the URL (restoring it after a page switch cleared it)."""
    wanted = {k: v for k, v in view().items() if v != ""}
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


def parse_float(text: str, default: float, low: float = 0.0, high: float = math.inf) -> float:
    """`text` as a finite number in (low, high], else `default` (a hand-edited URL never breaks the page)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) and low < value <= high else default


def number_text(value: float) -> str:
    """`value` as the shortest text that reads back as the same float: "37.5", "40", "1e-05" (what the URL keeps).

    Args:
        value: a finite number.
    Returns:
        Its text.
    """
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def parse_list(text: str) -> list[str]:
    return [p for p in (s.strip() for s in text.split(",")) if p]


def bind(name: str, initial: Callable[[], T]) -> str:
    """The session key of the widget that shows view key `name`, seeded with `initial()` when the widget has no
    state yet (first run, or after its page was left)."""
    key = f"w_{name}"
    if key not in st.session_state:
        st.session_state[key] = initial()
    return key


def apply_view(values: Mapping[str, str]) -> None:
    """Replace view keys and drop the widgets' state so that they show the new values; call it from a callback
    (before the widgets are drawn)."""
    state = view()
    for key, value in values.items():
        if key in VIEW_DEFAULTS and isinstance(value, str):
            state[key] = value[:_MAX_PARAM]
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith("w_")]:
        del st.session_state[key]


# -- selection ----------------------------------------------------------------------------------------------


def selected_id() -> str | None:
    return view()["sel"] or None


def pinned_ids() -> list[str]:
    return parse_list(view()["pins"])[:4]


def clicked_ids(event: Any) -> list[str]:
    """The variant ids of the points in a plotly selection event: the point's `ids` entry, else its `customdata`
    (a string, or the first item of a list)."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return []
    out = []
    for p in points or []:
        if not isinstance(p, Mapping):
            continue
        data = p.get("id") if isinstance(p.get("id"), str) else p.get("customdata")  # plotly `ids`, else customdata
        if isinstance(data, list):
            data = data[0] if data else None
        if isinstance(data, str) and data:
            out.append(data)
    return out


def chart(fig: go.Figure | Callable[[], go.Figure], key: str, deps: Hashable = None) -> None:
    """Draw a figure whose points select their variant when clicked (on every page, through the view state); it is
    updated in place when the figure changes (`plotly_component`).

    Args:
        fig: the figure, or a function that builds it from the results store's rows and `deps` alone: it is then
            built and serialised once per `deps` and version of the store, for every session (a figure of thousands
            of points takes longer to build than the rest of its page).
        key: the chart's key.
        deps: with a function `fig`, everything besides the store's rows that the figure depends on.
    """
    spec = fig if isinstance(fig, go.Figure) else _figure_json(key, store_key(), deps, fig)
    ids = clicked_ids(plotly_chart(spec, key))
    if ids and ids[0] != selected_id():
        set_view(sel=ids[0])
        st.rerun()


@st.cache_data(max_entries=8, show_spinner=False)
def _figure_json(key: str, store: tuple, deps: Hashable, _make: Callable[[], go.Figure]) -> str:
    return figure_json(_make(), key)


# -- link rate and delay -------------------------------------------------------------------------------------

# The slider's stops in kB/s: every two-digit rate from 100 B/s to 1 GB/s (1.0, 1.1, ... 9.9 times a power of ten:
# log-spaced, at most 10 % apart); any rate in that range can be typed, and the view keeps it exactly.
RATES_KBPS = [float(f"{m}e{e}") for e in range(-2, 5) for m in range(10, 100)] + [1e6]
_RATE_LABELS = {r: format_rate(r * 8e3) for r in RATES_KBPS}  # the slider's labels, formatted once
DEFAULT_RATE_KBPS = 40.0
MAX_DELAY_MS = 60_000.0  # the sidebar's largest propagation delay: a minute
_SLID, _TYPED = "w_rate_kBps", "w_rate_kBps_typed"  # the two widgets of the one view key


def view_rate_kbps() -> float:
    """The view state's link rate in kB/s, exactly as typed or read from the URL; 40 when it is not a number in the
    slider's range."""
    rate = parse_float(view()["rate_kBps"], DEFAULT_RATE_KBPS)
    return rate if RATES_KBPS[0] <= rate <= RATES_KBPS[-1] else DEFAULT_RATE_KBPS


def nearest_stop(kbps: float) -> float:
    """The slider's stop nearest to `kbps` on its log scale."""
    return min(RATES_KBPS, key=lambda r: abs(math.log(r / kbps)))


def _rate_slid() -> None:
    """The slider moved: the typed field and the view follow."""
    st.session_state[_TYPED] = float(st.session_state[_SLID])
    set_view(rate_kBps=number_text(st.session_state[_TYPED]))


def _rate_typed() -> None:
    """A rate typed: the view keeps it exactly, the slider shows its nearest stop."""
    st.session_state[_SLID] = nearest_stop(float(st.session_state[_TYPED]))
    set_view(rate_kBps=number_text(st.session_state[_TYPED]))


def rate_control() -> float:
    """The link rate (kB/s), bound to the view state: a log-scale slider for quick moves and a field for any rate,
    in the sidebar, or on the latency page above its chart (in a fragment there, so that a moved rate reruns the
    chart alone).

    Returns:
        The rate in kB/s, exactly as slid or typed.
    """
    bind("rate_kBps", lambda: nearest_stop(view_rate_kbps()))
    bind("rate_kBps_typed", view_rate_kbps)
    st.select_slider("Link rate", options=RATES_KBPS, key=_SLID, on_change=_rate_slid,
                     format_func=lambda r: _RATE_LABELS.get(r) or format_rate(r * 8e3),
                     help="log scale; R in latency = F_dev/C_dev + B/R + F_srv/C_srv")
    st.number_input("Link rate (kB/s)", min_value=RATES_KBPS[0], max_value=RATES_KBPS[-1], step=1.0, format="%.6g",
                    key=_TYPED, on_change=_rate_typed, help="any rate from 0.1 to 1,000,000 kB/s, kept as typed")
    return view_rate_kbps()


def view_delay_ms() -> float:
    """The view state's propagation delay in ms; 0 when it is not a number from 0 to `MAX_DELAY_MS`."""
    return max(0.0, parse_float(view()["delay_ms"], 0.0, -1.0, MAX_DELAY_MS))


def delay_input() -> float:
    """The propagation delay field (ms), bound to the view state.

    Returns:
        The one-way delay in milliseconds.
    """
    key = bind("delay_ms", view_delay_ms)
    return float(st.number_input("Propagation delay (ms)", min_value=0.0, max_value=MAX_DELAY_MS, step=1.0,
                                 format="%.6g", key=key,
                                 help="one way, device to server, added to every latency (D in latency = "
                                      "F_dev/C_dev + B/R + D + F_srv/C_srv); the runtime's `device --delay`"))


# -- environment --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """What the sidebar sets: the budget profile, width and dataset, both ends of the link, the accuracy
    requirement."""

    profile: str = "quick"
    width: float = 0.25
    device: DeviceProfile = DEVICES.get("pi3")
    server: DeviceProfile = DEVICES.get("rtx2080ti")
    rate_bps: float = 40e3 * 8
    accuracy_drop: float = DEFAULT_ACCURACY_DROP  # allowed drop below the base model's validation accuracy
    data: str = ""  # a dataset fingerprint from the results store; "" for the local dataset
    delay_s: float = 0.0  # one-way propagation delay, device to server
    model: str = "resnet18"  # a registered model or one's own (engine.models.model_factory)
    weights: str = ""  # a file of trained weights to start from; "" trains the base model


def environment() -> Environment:
    return st.session_state.get("env", Environment())


def environment_params() -> dict[str, str]:
    """The environment part of the view state (what an exported selection records)."""
    state = view()
    return {k: state[k] for k in ENVIRONMENT_KEYS}


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=2)
def _data(profile: str, data_env: str | None, cache: str) -> ImageData:
    """The dataset cut to the profile; keyed by where the data and cache are, so a changed location reloads."""
    from engine.data import load_data, subset

    prof = PROFILES.get(profile)
    data = load_data(data_env, cache_dir=Path(cache), download=False)
    if prof.train_limit or prof.test_limit:
        data = subset(data, prof.train_limit, prof.test_limit, seed=0)
    return data


def data_path() -> str | None:
    return os.environ.get("COINFER_DATA") or None


def dataset(profile: str) -> ImageData:
    """The profile's dataset; raises UserError (saying how to provide data) when there is none."""
    return _data(profile, data_path(), str(cache_dir()))


@st.cache_data(show_spinner=False, max_entries=16)
def _model_reference(model: str, weights: str, weights_mtime: float) -> tuple[str, str, str]:
    """(model reference, weights sha256, weights path) as the engine records them; cached per file version."""
    from engine.models import normalize_reference
    from engine.train import weights_reference

    sha, path = weights_reference(weights) if weights else ("", "")
    return normalize_reference(model), sha, path


def base_config(env: Environment, data: ImageData | None) -> BaseModelConfig:
    """The base model the pages show: the profile's recipe for the chosen model on the chosen (or local) dataset at
    the chosen width, from the chosen weights when given; a model or weights that cannot be loaded stop the page."""
    fingerprint = env.data or (data.fingerprint if data is not None else "")
    try:
        mtime = Path(env.weights).expanduser().stat().st_mtime if env.weights else 0.0
        model, sha, path = _model_reference(env.model, env.weights, mtime)
    except (UserError, OSError) as exc:
        st.error(str(exc))
        st.stop()
        raise
    return PROFILES.get(env.profile).base_config(fingerprint, width=env.width, model=model, weights=sha,
                                                 weights_path=path)


def require_data(env: Environment) -> ImageData:
    """The dataset, or an error on the page that says how to provide one (and stops the page)."""
    try:
        return dataset(env.profile)
    except UserError as exc:
        st.error(str(exc))
        st.stop()
        raise  # unreachable: st.stop() raises


def local_data(env: Environment) -> ImageData | None:
    try:
        return dataset(env.profile)
    except UserError:
        return None


def page_base(env: Environment) -> tuple[ImageData | None, BaseModelConfig]:
    """The local dataset (None when the sidebar chose a dataset known only from the results store) and the base
    model config; stops the page with a message when neither gives one."""
    data = local_data(env)
    if data is None and not env.data:
        require_data(env)
    if env.data and data is not None and data.fingerprint != env.data:
        data = None
    return data, base_config(env, data)


# -- results ------------------------------------------------------------------------------------------------


def _store_version(path: Path) -> tuple:
    """Changes whenever the store is written (SQLite in WAL mode: the database and its -wal file)."""
    out = []
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            s = p.stat()
            out.append((s.st_mtime_ns, s.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


@st.cache_resource(max_entries=4, show_spinner=False)
def _table(path: str, version: tuple) -> pd.DataFrame:
    return ResultsStore(path).table()


@st.cache_resource(show_spinner=False, max_entries=8)
def _open_store(path: str, exists: bool) -> ResultsStore:
    return ResultsStore(path)


def results_store() -> ResultsStore:
    """The results store under the cache (opened once per process; reopened when its file is gone)."""
    from engine.store import default_path

    path = default_path()
    return _open_store(str(path), path.exists())


def store_key() -> tuple[str, tuple]:
    """The results store's path and version (`_store_version`): the key of whatever is cached from its rows."""
    store = results_store()
    return str(store.path), _store_version(store.path)


def all_results() -> pd.DataFrame:
    """The whole results table (cached until the store changes; treat it as read-only)."""
    return _table(*store_key())


def known_datasets() -> list[tuple[Any, Any]]:
    """(fingerprint, name) of each dataset the stored rows were measured on, once each, in the table's order (cached
    until the store changes)."""
    return _known_datasets(*store_key())


@st.cache_data(max_entries=4, show_spinner=False)
def _known_datasets(path: str, version: tuple) -> list[tuple[Any, Any]]:
    table = _table(path, version)
    if table.empty or "dataset_fingerprint" not in table:
        return []
    return list(table[["dataset_fingerprint", "dataset"]].dropna().drop_duplicates().itertuples(index=False,
                                                                                              name=None))


def open_page(title: str, needs: str) -> tuple[Environment, ImageData | None, BaseModelConfig, pd.DataFrame]:
    """A results page's start: the environment, the view written back to the URL (it survives page switches), the
    title, the base model and its rows; without rows it says which jobs produce `needs` and stops the page."""
    env = environment()
    sync_url()
    st.title(title)
    data, base = page_base(env)
    table = results(base)
    if table.empty:
        no_rows(needs)
        st.stop()
    example_note(table)
    return env, data, base, table


def example_note(table: pd.DataFrame) -> None:
    """A caption when rows on the page are the shipped example results, not measured here."""
    shown = exchange.examples(table)
    if len(shown):
        where = str(shown["measured_on"].dropna().iloc[0]) if shown["measured_on"].notna().any() else "elsewhere"
        st.info(f"{len(shown)} of these {len(table)} rows are **example results**, measured on {where}, not on this "
                "machine: the Export page re-measures them here as jobs.")


def load_examples(profile: str) -> None:
    """The plane's "Load the example results" of `profile` (a button callback): merge them into the local store
    and show their base model (the profile on their dataset: the local one when it is the same, else the results
    store's)."""
    path = exchange.example_file(profile)
    if path is None:
        st.session_state["_examples_error"] = f"no example results ship for the {profile} profile"
        return
    try:
        exchange.load_examples(results_store(), path)
    except UserError as exc:
        st.session_state["_examples_error"] = str(exc)
        return
    shown = exchange.examples(all_results())
    shown = shown[shown["imported_from"].astype(str).str.startswith(f"{exchange.EXAMPLE_MARK}: {path.name}")]
    fingerprint, width = str(shown["dataset_fingerprint"].iloc[0]), float(shown["width"].iloc[0])
    local = local_data(Environment(profile, width))
    apply_view({"profile": profile, "width": f"{width:g}",
                "data": "" if local is not None and local.fingerprint == fingerprint else fingerprint})


def example_buttons(primary: bool = False, only: str | None = None) -> None:
    """A "Load the example results" button for each profile that ships them (`only`: that profile's alone); the
    default profile's plain and, with `primary`, the primary one, the others named."""
    default = VIEW_DEFAULTS["profile"]
    for profile in exchange.example_profiles():
        if only is not None and profile != only:
            continue
        label = "Load the example results" + ("" if profile == default or only else f" ({profile})")
        st.button(label, type="primary" if primary and profile == default else "secondary", on_click=load_examples,
                  args=(profile,), key=f"examples-{profile}",
                  help=f"the {profile} profile as measured on this project's reference machine, viewable without "
                       "the dataset (rows marked as examples, shown for the same dataset, profile and width); "
                       "re-measure them here from the Export page")


def results(base: BaseModelConfig) -> pd.DataFrame:
    """Every stored row built on `base`, all methods."""
    table = all_results()
    return table[table["base_id"] == base.id] if not table.empty else table


def variant_parents(table: pd.DataFrame, variant_id: str) -> dict[str, str]:
    """The ids of a row's parents by role (a method's `parents`, e.g. `three_step`'s pruned and coded rows); {} for a
    row whose method names none, or whose config cannot be rebuilt from it."""
    rows = table[table["id"] == variant_id]
    if rows.empty:
        return {}
    row = rows.iloc[0].to_dict()
    try:
        parents = getattr(METHODS.get(str(row["method"])), "parents", None)
        return {role: v.id for role, v in parents(row_config(row)).items()} if parents else {}
    except UserError:
        return {}


def threshold(env: Environment, table: pd.DataFrame) -> float | None:
    """The validation accuracy a variant needs: the base model's validation accuracy minus the allowed drop (None
    when no row carries it: rows of an earlier release, never chosen)."""
    return validation_threshold(table, env.accuracy_drop)


def threshold_text(env: Environment, need: float | None) -> str:
    """The requirement in words, for a caption."""
    if need is None:
        return "no validation figure yet: re-measure the variants"
    return (f"validation accuracy ≥ **{need:.2%}** (base {need + env.accuracy_drop:.2%} − "
            f"{env.accuracy_drop * 100:g} points); test accuracy reports")


def percent(value: object, spec: str = ".2%") -> str:
    """An accuracy as a percentage for a label; "no figure (re-measure)" where it is missing."""
    ok = isinstance(value, float | int | np.number) and not isinstance(value, bool) and value == value
    return format(float(value), spec) if ok else "no figure (re-measure)"


def remeasure_note(table: pd.DataFrame) -> None:
    """A caption when rows lack a validation figure (measured by an earlier release): they are never chosen."""
    missing = int(decision_accuracy(table).isna().sum())
    if missing:
        st.warning(f"{missing} variant(s) have no validation figure (measured by an earlier release) and are kept "
                   f"out of every choice: {NO_VALIDATION}, e.g. with the profile's sweep on the Jobs page.")


def png_bits(table: pd.DataFrame, data: ImageData | None) -> float | None:
    """The mean PNG size of the test images: from the rows when they carry it, else measured (cached)."""
    if "png_bits" in table and table["png_bits"].notna().any():
        return float(table["png_bits"].dropna().iloc[0])
    return None if data is None else _png_bits(data.fingerprint, data)


@st.cache_data(show_spinner="Measuring the PNG size of the test images…")
def _png_bits(fingerprint: str, _data: ImageData) -> float:
    from engine.data import mean_png_bits

    return mean_png_bits(_data, cache_dir())


@st.cache_data(show_spinner="Profiling the untrained model at each split…", max_entries=8)
def untrained_profile(profile: str, width: float, fingerprint: str, model: str = "resnet18") -> pd.DataFrame:
    """FLOPs, memory and 8-bit feature size of each split of the untrained model (the empty state's plane)."""
    from engine.models import split_names
    from engine.profile import profile_model
    from engine.train import make_model

    data = dataset(profile)
    base = PROFILES.get(profile).base_config(fingerprint, width=width, model=model)
    built = make_model(base, data)
    rows = profile_model(built, (data.channels, *data.image_size), data.num_classes, split_names(built))
    return pd.DataFrame(rows).assign(method="profile", id=None)


def split_order(table: pd.DataFrame) -> list[str]:
    """The splits of a results table in the model's order (each row's `split_order`), input side first."""
    names = list(dict.fromkeys(table["split"])) if "split" in table else []
    if "split_order" not in table:
        return names
    order = table.groupby("split")["split_order"].min()
    return sorted(names, key=lambda s: order.get(s, 0))


def emulated_bf16_warning(base: BaseModelConfig) -> None:
    """Warn before training a bf16 profile where bf16 is only emulated (a CPU without AVX-512 BF16 or AMX)."""
    from engine.train import native_bf16
    from engine.training import pick_device

    if base.precision == "bf16" and not native_bf16(pick_device()):
        st.warning("This machine computes bf16 only by emulation: a bf16 profile trains slower here than in fp32. "
                   "Pick the quick profile instead.")


def no_rows(what: str) -> None:
    """Say that the page needs measured rows, which jobs produce them, and where to start them."""
    st.info(f"No measured variants for this base model yet: {what} come from the variant jobs (`original` first, "
            "then `bottlenet_pp`, `two_step_pruning`, `three_step`). Start the profile on the Jobs page or the "
            "Trade-off plane page, or `python -m engine sweep --profile "
            f"{environment().profile}`; rows appear here as jobs finish.")
    st.page_link("app_pages/jobs.py", label="Go to Jobs", icon="▶️")


TABLE_ROWS = 500  # rows a table shows at once: a longer one is paged (thousands of rows slow the whole page)


def paged(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """`frame`, or, when it has more than `TABLE_ROWS` rows, the page of them chosen in a page field (session state
    `key`), with a caption saying which rows are shown.

    Args:
        frame: the table to show, in its order.
        key: the page field's session key.
    Returns:
        The rows to show.
    """
    if len(frame) <= TABLE_ROWS:
        return frame
    pages = math.ceil(len(frame) / TABLE_ROWS)
    if not 1 <= st.session_state.get(key, 1) <= pages:  # fewer rows than when the page was chosen
        st.session_state[key] = 1
    page = int(st.number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, step=1, key=key))
    start = (page - 1) * TABLE_ROWS
    st.caption(f"Rows {start + 1:,}–{min(start + TABLE_ROWS, len(frame)):,} of {len(frame):,}, {TABLE_ROWS:,} a page "
               "(the Export page's CSV holds every row)")
    return frame.iloc[start:start + TABLE_ROWS]


# -- jobs ---------------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=8)
def _open_queue(path: str, exists: bool) -> jobq.JobQueue:
    return jobq.JobQueue(path)


def job_queue() -> jobq.JobQueue:
    """The job queue under the cache (opened once per process; reopened when its file is gone)."""
    path = jobq.default_path()
    return _open_queue(str(path), path.exists())


def start_jobs(specs: Iterable[jobq.JobSpec], priorities: Iterable[int] | int = 0) -> list[str]:
    """Queue jobs (finished ones of the same ids again) and make sure a worker takes them."""
    queue = job_queue()
    ids = queue.submit(list(specs), priorities if isinstance(priorities, int) else list(priorities),
                       requeue_finished=True)
    run_queue()
    return ids


def queue_untrained(cfg: VariantConfig, profile: str, exc: NotTrained) -> None:
    """A page needed a trained part that is not in the cache: pages never train in the script run, so the variant
    goes to the queue, and the page says so."""
    start_jobs([jobq.JobSpec.for_variant(cfg, profile, data_path())])
    st.warning(f"{exc} It is queued (`{cfg.id}`); follow it on the Jobs page and try again when it is done.")


def run_queue() -> None:
    """Make sure a worker takes the queue's jobs. A queue someone paused stays paused: its jobs wait, and the page
    says so (only the Jobs page's resume button, `resume_queue`, resumes it)."""
    queue = job_queue()
    if (reason := queue.paused()) is not None:
        st.info(f"The job queue is paused ({reason}): queued jobs wait until it is resumed on the Jobs page.")
        return
    jobq.ensure_worker(queue)


def resume_queue() -> None:
    """Resume the job queue and make sure a worker takes its jobs (the Jobs page's resume button)."""
    queue = job_queue()
    queue.resume()
    jobq.ensure_worker(queue)


def eta_seconds(progress: float, started_at: float | None, now: float | None = None) -> float | None:
    """Seconds left for a running job at constant speed; None before there is anything to go by."""
    if started_at is None or not 0.01 <= progress < 1.0:
        return None
    elapsed = (time.time() if now is None else now) - started_at
    return max(elapsed, 0.0) * (1.0 - progress) / progress


def start_sweep(profile: str, base: BaseModelConfig, methods: list[str] | None = None) -> int:
    """Queue the profile's sweep of `base` (the variants not measured yet), and cross its rows as they arrive: the
    follow-up rounds are queued by `follow_sweep` while a page that shows the jobs is open, as `python -m engine
    sweep` queues them. Returns how many variants were queued."""
    planned = sweep.plan(profile, base, data_path(), methods=methods)
    queue = job_queue()
    queue.follow(base.id, {"profile": profile, "data": data_path(), "methods": methods})
    queued, _ = sweep.submit(queue, planned, results_store())
    run_queue()
    return len(queued)


def crossed_variants(profile: str, base: BaseModelConfig, methods: Iterable[str]) -> list[sweep.Planned]:
    """`sweep.followups` of the results store (cached until the store changes: it reads every row)."""
    return _followups(*store_key(), profile, base, data_path(), tuple(methods))


@st.cache_data(max_entries=8, show_spinner=False)
def _followups(path: str, version: tuple, profile: str, base: BaseModelConfig, data: str | None,
               methods: tuple[str, ...]) -> list[sweep.Planned]:
    return sweep.followups(profile, base, _open_store(path, Path(path).exists()), data, methods=list(methods))


def follow_sweep(base: BaseModelConfig) -> None:
    """Queue the next round of a started sweep's crossed variants once its jobs are done (`sweep.next_round`)."""
    if sweep.next_round(job_queue(), results_store(), base):
        run_queue()


@st.fragment(run_every=2.0)
def progress_strip(base: BaseModelConfig, shown: frozenset[str]) -> None:
    """One progress bar over this base model's active jobs; a job that finished with a row not drawn yet reruns
    the page, so new points appear without a reload. A started sweep's next round of crossed variants is queued
    here when its jobs are done."""
    follow_sweep(base)
    base_id = base.id
    jobs = [j for j in job_queue().jobs(base_id=base_id, reap=False) if j.kind == "variant"]
    active = [j for j in jobs if j.status in jobq.ACTIVE]
    if active:
        batch = [j for j in jobs if j.status in jobq.ACTIVE or (j.finished and j.id not in shown)]
        fraction = sum(1.0 if j.finished else j.progress for j in batch) / max(len(batch), 1)
        running = [j for j in active if j.status in ("running", "cancelling")]
        paused = job_queue().paused()
        waiting = "the queue is paused (the Jobs page resumes it)" if paused else "waiting for a worker"
        text = f"{len(batch) - len(active)}/{len(batch)} variants finished · " + (
            f"{running[0].method} @ {running[0].split}: {running[0].message}" if running else waiting)
        st.progress(min(fraction, 1.0), text=text)
        if not running and not paused and not job_queue().live_workers():
            jobq.ensure_worker(job_queue())
    failed = [j for j in jobs if j.status == "failed"]
    if failed:
        st.warning(f"{len(failed)} job(s) failed, e.g. {failed[0].method} @ {failed[0].split}: {failed[0].error} — "
                   "see the Jobs page to retry.")
    store = results_store()
    if any(j.status == "done" and j.id not in shown and j.id in store for j in jobs):
        st.rerun()


RATES_BPS = np.geomspace(1e2 * 8, 1e9 * 8, 71)  # 100 B/s .. 1 GB/s, as the sidebar's slider


def latency_curves(base: BaseModelConfig, env: Environment, need: float | None,
                   overheads: Overheads | None = None) -> pd.DataFrame:
    """`engine.pareto.latency_vs_rate` of this base model's rows over `RATES_BPS` (Fig. 4's curves). It does not
    depend on the chosen rate, so a rate change reuses it (cached until the store or the environment changes)."""
    store = results_store()
    return _latency_curves(str(store.path), _store_version(store.path), base.id,
                           (env.device.flops_per_s, env.device.memory_bytes, "", env.device.memory_figure),
                           (env.server.flops_per_s, env.server.memory_bytes), need,
                           None if overheads is None else dataclasses.astuple(overheads), env.delay_s)


@st.cache_data(max_entries=16, show_spinner=False)
def _latency_curves(path: str, version: tuple, base_id: str, device: tuple[float, float, str, str],
                    server: tuple[float, float], need: float | None, overheads: tuple | None,
                    delay_s: float) -> pd.DataFrame:
    from engine.pareto import latency_vs_rate

    table = _table(path, version)
    table = table[table["base_id"] == base_id] if not table.empty else table
    return latency_vs_rate(table, DeviceProfile("device", *device), DeviceProfile("server", *server), RATES_BPS, need,
                           overheads=None if overheads is None else Overheads(*overheads), delay_s=delay_s)


def deployment_overheads(enabled: bool) -> Overheads | None:
    """What the latency pages add to the paper's model when the overheads toggle is on: each row's entropy coding
    time (measured on the machine that profiled it) and the protocol's framing bytes; no runtime constant, since it
    belongs to the deployment (the live page measures this machine's)."""
    return Overheads() if enabled else None


# -- search -------------------------------------------------------------------------------------------------


def search_request(env: Environment, objective: str = "latency", budget_min: float | None = None,
                   trials: int | None = None, workers: int = 1) -> SearchRequest:
    """The `python -m engine search` request for the sidebar's environment (its profile, model, weights, width,
    device, server, link rate, delay and accuracy drop) and the local dataset."""
    from engine.search.launch import SearchRequest

    return SearchRequest.of(env.profile, env.device, env.server, env.rate_bps, delay_s=env.delay_s,
                            drop=env.accuracy_drop, objective=objective, width=env.width, model=env.model,
                            weights=env.weights, data=data_path(), budget_min=budget_min, trials=trials,
                            workers=workers)


@st.cache_resource(show_spinner=False, max_entries=4)
def _search_storage(path: str, identity: tuple) -> Any:
    from engine.search.watch import open_storage

    return open_storage(Path(path).parent.parent)


@st.cache_resource(show_spinner=False, max_entries=8)
def _search_study(path: str, identity: tuple, name: str, version: tuple) -> StudyView | None:
    from engine.search.watch import read_study

    storage = _search_storage(path, identity)
    return None if storage is None else read_study(storage, name)


def _search_path() -> Path:
    from engine.search.study import storage_path

    return storage_path(cache_dir())


def search_study(name: str) -> StudyView | None:
    """The study `name` as stored now (read again only when the studies' database changes; treat it as read-only);
    None when there is none yet. A UserError in one line when the database cannot be read."""
    path = _search_path()
    try:
        s = path.stat()
    except OSError:
        return None
    return _search_study(str(path), (s.st_dev, s.st_ino), name, _store_version(path))


@st.cache_resource(show_spinner=False, max_entries=8)
def search_views(name: str, version: tuple, _trials: tuple, objective: str) -> list:
    """Optuna's views of a study's trials (`engine.search.watch.optuna_views`), drawn once per study version."""
    from engine.search.watch import optuna_views

    return optuna_views(list(_trials), objective)


def search_version() -> tuple:
    """Changes whenever the studies' database is written."""
    return _store_version(_search_path())


def pin_variant(variant_id: str) -> None:
    """Pin a variant on the Compare page (a button's callback): added last to the pins, the oldest dropped beyond
    four; the Compare page's pin list is drawn afresh from the view."""
    pins = [p for p in pinned_ids() if p != variant_id]
    set_view(pins=",".join([*pins, variant_id][-4:]))
    st.session_state.pop("w_pins", None)
