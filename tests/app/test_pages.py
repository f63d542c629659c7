"""AppTests of the dashboard's pages: each page is run, its widgets changed, and the figure's data and the chosen
best point checked against the engine's functions on the same rows."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import measured_original
from streamlit.testing.v1 import AppTest

from app import ui
from engine import queue as jobq
from engine.config import VariantConfig
from engine.data import ImageData
from engine.deploy.selection import row_config, selection_json
from engine.figures import figure_png, plane_figure, png_export_problem
from engine.latency import DEVICES, Overheads, latency_table
from engine.methods import METHODS
from engine.models import split_names
from engine.pareto import best_per_method, best_variant, latency_vs_rate, meets_threshold, pareto_front
from engine.profile import profile_model
from engine.profiles import PROFILES
from engine.store import ResultsStore
from engine.train import make_model

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = str(PROJECT_ROOT / "dashboard.py")
sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from bench_pages import synthetic_rows  # noqa: E402
from synthetic import flipped_rows  # noqa: E402

PI3, GPU = DEVICES.get("pi3"), DEVICES.get("rtx2080ti")


# -- helpers --------------------------------------------------------------------------------------------------


def figures(at: AppTest) -> list[dict]:
    """The figures the page drew (`plotly_component`'s elements, in page order)."""
    return [json.loads(json.loads(c.proto.json)["figure"]) for c in at.get("bidi_component")
            if c.proto.component_name == "coinfer_plotly_chart"]


def figure(at: AppTest, index: int = 0) -> dict:
    return figures(at)[index]


def decoded(value: list | dict) -> list:
    """Plotly serialises numpy arrays as {"dtype", "bdata"} (base64); lists stay lists."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
    return list(value)


def traces(fig: dict) -> dict[str, dict]:
    return {t.get("name", ""): {k: decoded(v) if k in ("x", "y", "text", "customdata", "ids") else v
                                for k, v in t.items()} for t in fig["data"]}


def run_page(page: str = "plane", **params: str) -> AppTest:
    """A new session of the dashboard opened on a URL with these query parameters. (AppTest reruns only the page
    script after the first run, not the entrypoint with its sidebar: sidebar changes are tested as new URLs.)"""
    at = AppTest.from_file(DASHBOARD, default_timeout=90)
    at.query_params.update({"profile": "smoke", "width": "0.125", "page": page, **params})
    at.run()
    assert not at.exception, at.exception[0].message if at.exception else ""
    return at


def widget(at: AppTest, kind: str, label: str):  # noqa: ANN201 - a streamlit testing element
    found = [w for w in at.get(kind) if getattr(w, "label", "") == label] or [
        w for w in at.get(kind) if getattr(w, "label", "").startswith(label)]
    assert found, f"no {kind} labelled {label!r}"
    return found[0]


def params(at: AppTest) -> dict[str, str]:
    return {k: v if isinstance(v, str) else v[-1] for k, v in at.query_params.items()}


def texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in at.get(kind))


@pytest.fixture()
def no_worker(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Pages queue jobs but start no worker process in tests; counts the requests."""
    calls: list[int] = []
    monkeypatch.setattr(jobq, "ensure_worker", lambda queue, idle_exit_s=300.0: calls.append(1))
    return calls


@pytest.fixture(scope="module")
def measured_cache(tmp_path_factory: pytest.TempPathFactory, tmp_cache: Path, small_data: ImageData) -> Path:
    """A cache holding the smoke base model and its `original` rows at every split."""
    return measured_original(tmp_path_factory.mktemp("measured"), tmp_cache, small_data)


@pytest.fixture()
def measured(measured_cache: Path, shared_tar: Path, monkeypatch: pytest.MonkeyPatch) -> pd.DataFrame:
    monkeypatch.setenv("COINFER_CACHE", str(measured_cache))
    monkeypatch.setenv("COINFER_DATA", str(shared_tar))
    return ResultsStore(measured_cache / "results.sqlite").table()


@pytest.fixture()
def synthetic(fresh_cache: Path, small_data: ImageData) -> Iterator[pd.DataFrame]:
    """60 synthetic rows of the smoke base model (accuracies spread around the threshold) in a fresh cache."""
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    rows = synthetic_rows(base.id, 60, dataset_fingerprint=small_data.fingerprint)
    store = ResultsStore(fresh_cache / "results.sqlite")
    store.put_many(rows)
    yield store.table()


# -- the chart component --------------------------------------------------------------------------------------


def test_chart_component_serves_plotly_js_and_themes_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import plotly
    import plotly.graph_objects as go

    from app import plotly_component

    monkeypatch.setattr(plotly_component, "STATIC_DIR", tmp_path / "static")
    src = plotly_component.plotly_js_src()
    served = tmp_path / "static" / src.rsplit("/", 1)[1]
    assert src.startswith("app/static/") and plotly.__version__ in src
    shipped = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assert served.read_bytes() == shipped.read_bytes()
    served.write_text("kept")  # an existing copy is not written again
    assert plotly_component.plotly_js_src() == src and served.read_text() == "kept"
    assert [p.name for p in served.parent.iterdir()] == [served.name]  # no temporary file left behind

    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4], customdata=["a", "b"]), layout={"height": 300})
    spec = json.loads(plotly_component.figure_json(fig))
    assert decoded(spec["data"][0]["y"]) == [3, 4] and spec["data"][0]["customdata"] == ["a", "b"]
    assert spec["layout"]["height"] == 300
    template = spec["layout"]["template"]["layout"]
    assert template["yaxis"]["automargin"] and template["paper_bgcolor"] == "white"


# -- pure helpers of ui.py ------------------------------------------------------------------------------------


def test_ui_helpers() -> None:
    event = {"selection": {"points": [{"customdata": "abc"}, {"customdata": ["def"]}, {"x": 1},
                                      {"id": "ghi", "customdata": [0.5, 3.0]}, {"customdata": [0.5]}]}}
    assert ui.clicked_ids(event) == ["abc", "def", "ghi"]
    assert ui.clicked_ids({}) == [] and ui.clicked_ids(None) == []
    assert ui.eta_seconds(0.25, 100.0, now=110.0) == pytest.approx(30.0)
    assert ui.eta_seconds(0.0, 100.0, now=110.0) is None and ui.eta_seconds(0.5, None) is None
    assert ui.parse_float("1e400", 2.0) == 2.0 and ui.parse_float("nan", 2.0) == 2.0
    assert ui.parse_float("x", 2.0) == 2.0 and ui.parse_float("3", 2.0) == 3.0


# -- empty and partial states -----------------------------------------------------------------------------------


def test_before_any_job_the_plane_shows_the_untrained_profile(fresh_cache: Path, small_data: ImageData,
                                                               no_worker: list[int]) -> None:
    at = run_page()
    assert "No measured variants" in at.info[0].value
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    expected = {r["split"]: r for r in profile_model(make_model(base, small_data), (3, 32, 32), 10, split_names())}
    trace = traces(figure(at))["profile"]
    shown = dict(zip(trace["text"], zip(trace["x"], trace["y"], strict=True), strict=True))
    assert "server_only" not in shown and len(shown) >= 5  # 0 FLOPs: drawn as the PNG line, not on log axes
    for split, (x, y) in shown.items():
        assert x == expected[split]["device_flops"] and y == expected[split]["bits_8bit"]
    start = widget(at, "button", "Start the smoke profile")
    start.click().run()
    queued = jobq.JobQueue(fresh_cache / "jobs.sqlite").jobs(base_id=base.id)
    from engine import sweep

    assert sorted(j.id for j in queued) == sorted(p.id for p in sweep.plan("smoke", base))
    assert jobq.JobQueue(fresh_cache / "jobs.sqlite").following(base.id)["profile"] == "smoke"  # crossed as rows come
    assert no_worker  # a worker was asked for
    assert widget(at, "button", "Start the smoke profile").disabled  # jobs are active: no second start
    # the other pages say which jobs produce their rows
    for page in ("latency", "compare", "export"):
        other = run_page(page)
        assert "`original` first" in texts(other, "info"), page
        assert "sweep --profile smoke`" in texts(other, "info"), page
    assert "bf16" not in texts(at, "warning")


def test_a_bf16_profile_warns_where_bf16_is_emulated(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.train

    for native in (True, False):
        monkeypatch.setattr(engine.train, "native_bf16", lambda device, native=native: native)
        for page in ("plane", "jobs"):
            at = run_page(page, profile="quick-bf16", width="0.125")
            assert ("only by emulation" in texts(at, "warning")) is not native, (page, native)


def test_without_data_the_page_says_how_to_provide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("COINFER_DATA", raising=False)
    at = run_page()
    message = at.error[0].value
    for way in ("--data", "COINFER_DATA", "cache/data"):
        assert way in message
    assert widget(at, "button", "Download CIFAR-10")


# -- the plane --------------------------------------------------------------------------------------------------


def test_plane_draws_measured_rows_and_the_best_point(measured: pd.DataFrame) -> None:
    at = run_page()
    fig = figure(at)
    trace = traces(fig)["original"]
    by_split = {r["split"]: r for r in measured.to_dict("records")}
    template = trace["hovertemplate"]
    for part in ("accuracy %{customdata[0]:.2%}", "device FLOPs", "device memory B", "bits_ideal", "latency s",
                 "· link s", "width"):
        assert part in template
    for i, (split, x, y) in enumerate(zip(trace["text"], trace["x"], trace["y"], strict=True)):
        assert x == by_split[split]["device_flops"]
        assert y == pytest.approx(by_split[split]["bits_actual"])
        assert trace["ids"][i] == by_split[split]["id"]
        assert f"original @ {split}</b> · id {by_split[split]['id']}<br>bits=8" in trace["hovertext"][i]
        numbers = np.asarray(trace["customdata"]).reshape(len(trace["x"]), -1)[i]
        assert numbers[0] == pytest.approx(by_split[split]["accuracy"])  # accuracy first, as the template says
    png = float(measured["png_bits"].iloc[0])
    assert any(s.get("type") == "line" and s["y0"] == pytest.approx(png) for s in fig["layout"]["shapes"])
    assert any(s.get("type") == "rect" and s["y0"] == pytest.approx(png) for s in fig["layout"]["shapes"])
    symbols = decoded(trace["marker"]["symbol"])
    hollow = {s for s, sym in zip(trace["text"], symbols, strict=True) if sym == 100}  # 100: "circle-open"
    assert hollow == {s for s in trace["text"] if by_split[s]["bits_actual"] > png}
    need = float(measured["base_val_accuracy"].iloc[0]) - 0.02
    best = best_variant(measured, PI3, GPU, 40e3 * 8, need)
    assert f"`{best['id']}`" in at.success[0].value
    assert set(at.dataframe[-1].value["knobs"]) == {"bits=8"}  # the listing's knobs as text: Arrow types no dicts
    # the rate changes the best point: at 1 GB/s the fastest is the one with the least device work
    fast_page = run_page(rate_kBps="1e6")
    assert widget(fast_page, "select_slider", "Link rate").value == 1e6
    fast = best_variant(measured, PI3, GPU, 1e9 * 8, need)
    assert fast["id"] != best["id"] and f"`{fast['id']}`" in fast_page.success[0].value
    # ideal bits
    widget(at, "toggle", "Ideal bits").set_value(True).run()
    trace = traces(figure(at))["original"]
    for split, y in zip(trace["text"], trace["y"], strict=True):
        assert y == pytest.approx(by_split[split]["bits_ideal"])
    assert params(at)["bits"] == "ideal"
    # filter by split
    widget(at, "multiselect", "Splits").set_value(["conv4_x"]).run()
    assert traces(figure(at))["original"]["text"] == ["conv4_x"]
    # another width is another base model: its rows are not mixed in
    assert "original" not in traces(figure(run_page(width="0.25")))


def test_plane_threshold_front_and_selection(synthetic: pd.DataFrame) -> None:
    at = run_page(drop="1")
    need = 0.9 - 0.01
    points = synthetic[synthetic["device_flops"] > 0]
    ok = meets_threshold(points, need)
    shown = traces(figure(at))
    grey = shown["below the accuracy threshold"]
    assert sorted(grey["ids"]) == sorted(points[~ok]["id"])
    drawn = [i for name, t in shown.items() if name in {"original", "two_step_pruning", "bottlenet_pp", "three_step"}
             for i in t["ids"]]
    assert sorted(drawn) == sorted(points[ok]["id"])
    front = pareto_front(points[ok], "device_flops", "bits_actual")
    assert shown["Pareto front"]["x"] == front["device_flops"].tolist()
    assert shown["Pareto front"]["line"]["shape"] == "hv"
    widget(at, "toggle", "Hide below threshold").set_value(True).run()
    assert "below the accuracy threshold" not in traces(figure(at))
    widget(at, "radio", "Pareto front").set_value("method").run()
    names = traces(figure(at))
    assert "Pareto front" not in names and "three_step front" in names
    # a selection in the URL is starred on the plane and carried to the latency page
    pick = points[ok]["id"].iloc[3]
    at = run_page(sel=pick)
    assert traces(figure(at))["selected"]["ids"] == [pick]
    lat = run_page("latency", sel=pick)
    assert "Selected:" in lat.info[0].value
    assert traces(figure(lat))["selected"]["customdata"] == [pick]


def test_a_large_plane_draws_with_webgl_and_pages_its_table(synthetic: pd.DataFrame,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import figures

    monkeypatch.setattr(figures, "WEBGL_POINTS", 10)  # the 58 points of the synthetic rows count as many
    monkeypatch.setattr(ui, "TABLE_ROWS", 25)
    at = run_page(drop="1")
    need = 0.9 - 0.01
    points = synthetic[synthetic["device_flops"] > 0]
    ok = meets_threshold(points, need)
    fig = figure(at)
    assert {t["type"] for t in fig["data"]} == {"scattergl"}  # the front too: a WebGL trace draws above SVG ones
    shown = traces(fig)
    assert sorted(shown["below the accuracy threshold"]["ids"]) == sorted(points[~ok]["id"])
    drawn = [i for name, t in shown.items() if name in {"original", "two_step_pruning", "bottlenet_pp", "three_step"}
             for i in t["ids"]]
    assert sorted(drawn) == sorted(points[ok]["id"])
    assert shown["Pareto front"]["line"]["shape"] == "hv"
    front = pareto_front(points[ok], "device_flops", "bits_actual")
    assert shown["Pareto front"]["x"] == front["device_flops"].tolist()
    # the listing: 25 rows a page, in the listing's order, with a note of which
    listed = synthetic.sort_values(["method", "device_flops"])["id"].tolist()
    assert at.dataframe[-1].value["id"].tolist() == listed[:25]
    assert "Rows 1–25 of 60" in texts(at, "caption")
    widget(at, "number_input", "Page (of 3)").set_value(3).run()
    assert at.dataframe[-1].value["id"].tolist() == listed[50:]
    assert "Rows 51–60 of 60" in texts(at, "caption")
    few = run_page("plane", splits="conv2_x")  # fewer rows than a page: no page field, every row
    assert not [w for w in few.get("number_input") if w.label.startswith("Page")]
    assert len(few.dataframe[-1].value) == (synthetic["split"] == "conv2_x").sum()


def test_the_plane_is_built_once_per_view_and_store_version(synthetic: pd.DataFrame, fresh_cache: Path,
                                                            small_data: ImageData,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import figures

    built: list[int] = []
    plane_figure = figures.plane_figure
    monkeypatch.setattr(figures, "plane_figure", lambda *a, **k: built.append(1) or plane_figure(*a, **k))
    first = figure(run_page(drop="1.5"))
    assert len(built) == 1
    assert figure(run_page(drop="1.5")) == first and len(built) == 1  # another session on the same view
    assert figure(run_page(drop="2.5")) != first and len(built) == 2  # another view
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    row = synthetic_rows(base.id, len(synthetic) + 1, dataset_fingerprint=small_data.fingerprint)[-1]
    ResultsStore(fresh_cache / "results.sqlite").put(row)  # a new row: the figure is built again and shows it
    again = traces(figure(run_page(drop="1.5")))
    assert len(built) == 3 and row["id"] in [i for t in again.values() for i in t.get("ids") or []]


def test_view_state_survives_a_page_switch_and_a_reload(synthetic: pd.DataFrame) -> None:
    pick = synthetic["id"].iloc[5]
    at = run_page("latency", rate_kBps="10", sel=pick, device_gflops="5", bits="ideal")
    assert widget(at, "select_slider", "Link rate").value == 10
    assert widget(at, "number_input", "Device GFLOP/s").value == 5
    assert at.title[0].value == "Latency vs link rate"
    for key in list(at.query_params):  # a page switch in the browser clears the query parameters
        del at.query_params[key]
    at.run()
    assert not at.exception
    restored = params(at)
    assert restored["rate_kBps"] == "10" and restored["sel"] == pick and restored["device_gflops"] == "5"
    assert restored["page"] == "latency" and restored["bits"] == "ideal"
    # a reload (a new session) reads it all back from the URL
    again = run_page(**restored)
    assert widget(again, "select_slider", "Link rate").value == 10
    assert at.title[0].value == again.title[0].value == "Latency vs link rate"
    # a hand-edited URL with nonsense falls back to defaults, never a traceback
    odd = run_page("nope", rate_kBps="-3", device="toaster", device_gflops="inf", drop="1e9", width="abc")
    assert widget(odd, "select_slider", "Link rate").value == 40
    assert widget(odd, "number_input", "Device GFLOP/s").value == 24


def test_any_link_rate_round_trips_through_the_url(synthetic: pd.DataFrame) -> None:
    """A rate off the slider's stops is kept exactly: read from the URL into the typed field (the slider shows its
    nearest stop), written back unchanged, and used as it is; typed or slid on the page, the URL follows."""
    need = 0.9 - 0.02
    at = run_page(rate_kBps="37.5")  # the sidebar's controls
    assert widget(at, "number_input", "Link rate (kB/s)").value == 37.5
    assert widget(at, "select_slider", "Link rate").value == 38
    assert params(at)["rate_kBps"] == "37.5"
    again = run_page(**params(at))  # a reload: the same rate, not snapped
    assert widget(again, "number_input", "Link rate (kB/s)").value == 37.5 and params(again)["rate_kBps"] == "37.5"
    at = run_page("latency", rate_kBps="37.5")  # the latency page's own controls
    best = best_per_method(synthetic, PI3, GPU, 37.5 * 8e3, need)
    assert at.dataframe[0].value["latency"].tolist() == pytest.approx(best["latency"].tolist(), rel=1e-12)
    assert figure(at, 0)["layout"]["annotations"][0]["text"] == "37.5 kB/s"
    widget(at, "number_input", "Link rate (kB/s)").set_value(12.345).run()  # typed: exact in the URL and the table
    assert params(at)["rate_kBps"] == "12.345" and widget(at, "select_slider", "Link rate").value == 12
    typed = best_per_method(synthetic, PI3, GPU, 12.345 * 8e3, need)
    assert at.dataframe[0].value["latency"].tolist() == pytest.approx(typed["latency"].tolist(), rel=1e-12)
    widget(at, "select_slider", "Link rate").set_value(71.0).run()  # slid: the field and the URL follow
    assert params(at)["rate_kBps"] == "71" and widget(at, "number_input", "Link rate (kB/s)").value == 71
    assert widget(run_page("latency", rate_kBps="0.123456789"), "number_input", "Link rate (kB/s)").value == \
        0.123456789
    # a hand-edited rate or delay that is not one falls back to the default, never a traceback
    for bad in ("abc", "-3", "0", "nan", "inf", "0.01", "1e7", "40kB/s"):
        odd = run_page("latency", rate_kBps=bad, delay_ms="-5" if bad == "abc" else bad)
        assert widget(odd, "number_input", "Link rate (kB/s)").value == 40
        assert widget(odd, "select_slider", "Link rate").value == 40
        assert widget(odd, "number_input", "Propagation delay (ms)").value == (0 if bad != "0.01" else 0.01)
        assert params(odd)["rate_kBps"] == "40"


def test_a_propagation_delay_from_the_sidebar(synthetic: pd.DataFrame) -> None:
    """The sidebar's one-way delay is kept in the URL, added to every latency, and shown as its own term in the
    table, the breakdown's bars and the caption."""
    need = 0.9 - 0.02
    at = run_page("latency", rate_kBps="4", delay_ms="25")
    assert widget(at, "number_input", "Propagation delay (ms)").value == 25 and params(at)["delay_ms"] == "25"
    delayed = best_per_method(synthetic, PI3, GPU, 4e3 * 8, need, delay_s=0.025)
    table = at.dataframe[0].value
    assert table["id"].tolist() == best_per_method(synthetic, PI3, GPU, 4e3 * 8, need)["id"].tolist()
    assert table["latency"].tolist() == pytest.approx(delayed["latency"].tolist(), rel=1e-12)
    assert table["t_propagation"].tolist() == pytest.approx([0.025] * len(table))
    assert traces(figure(at, 1))["propagation delay"]["x"] == pytest.approx([0.025] * len(table))
    assert "+ D (propagation delay, 25 ms one way)" in texts(at, "caption") and "delay" in at.success[0].value
    curves = traces(figure(at, 0))
    plain = latency_vs_rate(synthetic, PI3, GPU, np.geomspace(8e2, 8e9, 71), need, delay_s=0.025)
    for method, group in plain.groupby("method"):
        assert curves[method]["y"] == pytest.approx(group["latency"].tolist())
    assert "t_propagation" not in run_page("latency", rate_kBps="4").dataframe[0].value.columns  # none by default


# -- latency vs rate --------------------------------------------------------------------------------------------


def test_latency_page_best_per_method(synthetic: pd.DataFrame) -> None:
    at = run_page("latency", rate_kBps="4")
    need = 0.9 - 0.02
    curves = latency_vs_rate(synthetic, PI3, GPU, np.geomspace(8e2, 8e9, 71), need)
    shown = traces(figure(at, 0))
    for method, group in curves.groupby("method"):
        assert shown[method]["y"] == pytest.approx(group["latency"].tolist())
        assert shown[method]["customdata"] == group["id"].tolist()
        # a clickable marker where each variant becomes the method's best (rising rate)
        ids = group["id"].tolist()
        assert shown[f"{method} variants"]["customdata"] == [i for k, i in enumerate(ids) if k == 0 or ids[k - 1] != i]
    assert "knobs bits=" in shown["three_step variants"]["hovertext"][0]  # the variant's whole configuration
    assert any(s.get("type") == "line" and s["x0"] == pytest.approx(4.0) for s in figure(at, 0)["layout"]["shapes"])
    best = best_per_method(synthetic, PI3, GPU, 4e3 * 8, need)
    table = at.dataframe[0].value
    assert table["id"].tolist() == best["id"].tolist()
    bars = traces(figure(at, 1))
    assert bars["transmission"]["x"] == pytest.approx(best["t_transmit"].tolist())
    assert f"`{best['id'].iloc[0]}`" in at.success[0].value
    assert "t_coding" not in table.columns and "entropy coding" not in bars
    # with the measured overheads counted: coding and framing columns and bars, from the same pure functions
    at = run_page("latency", rate_kBps="4", overheads="on")
    assert widget(at, "toggle", "Count measured coding and framing").value
    counted = best_per_method(synthetic, PI3, GPU, 4e3 * 8, need, overheads=Overheads())
    table = at.dataframe[0].value
    assert table["id"].tolist() == counted["id"].tolist()
    assert table["latency"].tolist() == pytest.approx(counted["latency"].tolist())
    assert table["t_overhead"].tolist() == pytest.approx([Overheads().framing_bits / 32e3] * len(table))
    assert {"entropy coding", "framing and runtime"} <= set(traces(figure(at, 1)))
    at = run_page("latency", rate_kBps="1e5")
    faster = best_per_method(synthetic, PI3, GPU, 1e5 * 8e3, need)
    assert at.dataframe[0].value["id"].tolist() == faster["id"].tolist()
    assert faster["id"].tolist() != best["id"].tolist()
    # the page's own rate slider (the sidebar names the rate only): moved, the chart, table and URL follow
    assert not [s for s in at.sidebar.select_slider if s.label == "Link rate"]
    assert "set on this page" in " ".join(c.value for c in at.sidebar.caption)
    widget(at, "select_slider", "Link rate").set_value(4.0).run()
    assert at.dataframe[0].value["id"].tolist() == best["id"].tolist()
    assert figure(at, 0)["layout"]["annotations"][0]["text"] == "4 kB/s" and params(at)["rate_kBps"] == "4"
    # a device with little memory: the variants that do not fit are said to be infeasible
    at = run_page("latency", rate_kBps="1e5", device_mb="1")
    lat = latency_table(synthetic, PI3.__class__("pi3", 24e9, 1e6), GPU, 1e5 * 8e3)
    assert f"{int((~lat['feasible']).sum())} variant(s) are infeasible" in at.warning[-1].value
    assert set(at.dataframe[0].value["split"]) <= {"server_only"} | set(lat[lat["feasible"]]["split"])


# -- validation decides ----------------------------------------------------------------------------------------


@pytest.fixture()
def flipped(fresh_cache: Path, small_data: ImageData) -> pd.DataFrame:
    """Rows of the smoke base model whose validation and test accuracies disagree so that every choice flips."""
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    store = ResultsStore(fresh_cache / "results.sqlite")
    store.put_many(flipped_rows(base.id, dataset_fingerprint=small_data.fingerprint, width=base.width, seed=0,
                                png_bits=18_000.0))
    return store.table()


def test_the_width_1_cpu_profile_s_rows_are_drawn_like_any_other(fresh_cache: Path, small_data: ImageData) -> None:
    """Rows of the paper-cpu base model (width 1.0) are those its pages draw, and only there."""
    whole = small_data.fingerprint.split("-sub")[0]  # the profile trains on all of the data, not smoke's subset
    base = PROFILES.get("paper-cpu").base_config(whole)
    ResultsStore(fresh_cache / "results.sqlite").put_many(flipped_rows(
        base.id, dataset_fingerprint=whole, width=base.width, seed=0, png_bits=18_000.0))
    plane = run_page(profile="paper-cpu", width="1")
    drawn = [i for t in traces(figure(plane)).values() for i in (t.get("ids") or [])]
    assert drawn and all(i.startswith(("v-", "t-")) for i in drawn)
    assert "validation accuracy ≥ **90.00%**" in texts(plane, "caption")
    latency = run_page("latency", profile="paper-cpu", width="1")
    assert set(latency.dataframe[0].value["method"]) == {"original", "two_step_pruning", "bottlenet_pp", "three_step"}
    elsewhere = run_page(profile="quick", width="1")  # another profile's base model: none of these rows
    assert "No measured variants for this base model yet" in texts(elsewhere, "info")


def test_every_page_chooses_on_validation_accuracy(flipped: pd.DataFrame) -> None:
    need = 0.92 - 0.02  # the base model's validation accuracy minus the sidebar's default drop
    best = best_variant(flipped, PI3, GPU, 40e3 * 8, need)
    assert best["id"].startswith("v-")
    plane = run_page()
    assert f"`{best['id']}`" in plane.success[0].value and "validation accuracy" in plane.success[0].value
    assert "validation accuracy ≥ **90.00%**" in texts(plane, "caption")
    drawn = [i for name, t in traces(figure(plane)).items() if name in {"original", "three_step"} for i in t["ids"]]
    assert drawn and all(i.startswith("v-") for i in drawn)
    assert all(i.startswith("t-") for i in traces(figure(plane))["below the accuracy threshold"]["ids"])
    latency = run_page("latency")
    table = latency.dataframe[0].value
    assert table["id"].tolist() == best_per_method(flipped, PI3, GPU, 40e3 * 8, need)["id"].tolist()
    assert all(i.startswith("v-") for i in table["id"]) and {"accuracy", "deployed_val_accuracy"} <= set(table)
    assert all(i.startswith("v-") for i in traces(figure(latency, 0))["three_step"]["customdata"])
    export = run_page("export")
    assert f"`{best['id']}`" in texts(export, "markdown")
    live = run_page("live")
    first = best_per_method(flipped, PI3, GPU, 40e3 * 8, need)["id"].iloc[0]
    assert widget(live, "selectbox", "Variant").value == first and first.startswith("v-")
    old = flipped.drop(columns="deployed_val_accuracy")
    store = ResultsStore(Path(os.environ["COINFER_CACHE"]) / "results.sqlite")
    store.put_many(old.assign(id=old["id"] + "-old", deployed_val_accuracy=None).to_dict("records"))
    plane = run_page()
    assert "16 variant(s) have no validation figure" in plane.warning[0].value
    assert f"`{best['id']}`" in plane.success[0].value  # the old rows are never chosen




def test_compare_shows_only_what_differs(synthetic: pd.DataFrame) -> None:
    a, b = synthetic["id"].iloc[4], synthetic["id"].iloc[9]
    at = run_page("compare", pins=f"{a},{b}")
    diff = at.dataframe[0].value
    assert len(diff) == 2
    ra, rb = (synthetic.set_index("id").loc[i] for i in (a, b))
    assert diff["Δ device_flops"].tolist() == pytest.approx([0.0, rb["device_flops"] - ra["device_flops"]])
    assert "width" not in diff and "seed" not in diff  # the same for both: not shown
    pinned = traces(figure(at))["pinned"]
    assert sorted(pinned["ids"]) == sorted([a, b]) and sorted(pinned["text"]) == ["A", "B"]
    widget(at, "button", "Pin the baselines").click().run()
    baselines = synthetic[synthetic["split"].isin(["server_only", "device_only"])]["id"].tolist()
    assert len(at.dataframe[0].value) == 4
    assert params(at)["pins"] == ",".join([a, b, *baselines])
    one = run_page("compare", pins=a)
    assert "Pin two to four" in one.info[0].value


def test_compare_pins_a_pruned_and_coded_row_with_its_parents(synthetic: pd.DataFrame) -> None:
    """The crossed row beside its coding unpruned, its snapshot uncoded and the original split: what each step
    bought."""
    template = synthetic.iloc[0].to_dict()
    base = PROFILES.get("smoke").base_config(str(template["dataset_fingerprint"]))
    run = {**PROFILES.get("smoke").prune.knobs(), "snapshot": 1}
    coding = dict(PROFILES.get("smoke").codings[1])
    child = VariantConfig.make("three_step", "conv4_x", base, **run, **coding)
    family = [child, *METHODS.get("three_step").parents(child).values()]
    rows = [{**template, "id": v.id, "method": v.method, "split": v.split, "knobs": dict(v.knobs),
             "base_id": base.id, "width": base.width, "seed": base.seed, "device_flops": 1e6 * (i + 1),
             "bits_actual": 10.0 ** (i + 1)} for i, v in enumerate(family)]
    ResultsStore(Path(os.environ["COINFER_CACHE"]) / "results.sqlite").put_many(rows)
    at = run_page("compare", sel=child.id)
    widget(at, "button", "Pin it with its parents").click().run()
    assert params(at)["pins"] == ",".join(v.id for v in family)
    assert len(at.dataframe[0].value) == 4
    lone = run_page("compare", sel=synthetic["id"].iloc[0])
    assert widget(lone, "button", "Pin it with its parents").disabled


# -- jobs -------------------------------------------------------------------------------------------------------


def test_jobs_page_queues_cancels_and_retries(fresh_cache: Path, small_data: ImageData, no_worker: list[int]) -> None:
    at = run_page("jobs")
    assert "No jobs yet" in texts(at, "markdown")
    widget(at, "text_input", "Knobs").set_value("bits")
    widget(at, "button", "Queue").click().run()
    assert "a knob is NAME=VALUE" in at.error[0].value
    assert widget(at, "text_input", "Knobs").placeholder == "bits=8"  # the method's own knobs at the split
    widget(at, "text_input", "Knobs").set_value("sparsity=0.5")
    widget(at, "button", "Queue").click().run()
    assert at.error[0].value == "original has no knob 'sparsity'; its knobs: bits"
    queue = jobq.JobQueue(fresh_cache / "jobs.sqlite")
    assert queue.jobs() == []
    widget(at, "text_input", "Knobs").set_value("bits=4")
    widget(at, "button", "Queue").click().run()
    [job] = queue.jobs()
    assert (job.method, job.split, job.spec.knobs["bits"], job.status) == ("original", "conv4_x", 4, "queued")
    at.run()
    assert job.id in texts(at, "markdown") or job.id in "".join(str(p.proto) for p in at.get("progress"))
    widget(at, "button", "Cancel").click().run()
    assert queue.get(job.id).status == "cancelled"
    widget(at, "button", "Retry").click().run()
    assert queue.get(job.id).status == "queued"
    # a failed job shows its error in one line
    claimed = queue.claim("test-worker")
    queue.fail(claimed.id, claimed.lease, "UserError: the data went away", "Traceback (most recent call last): ...")
    at.run()
    assert "the data went away" in at.error[0].value
    widget(at, "button", "Queue the smoke sweep").click().run()
    assert "Queued" in at.success[0].value
    # pause: queued jobs wait and no worker is started for them until the queue is resumed
    widget(at, "button", "Pause the queue").click().run()
    assert queue.paused() == "paused from the Jobs page" and "The queue is paused" in at.info[0].value
    asked = len(no_worker)
    widget(at, "button", "Queue the smoke sweep").click().run()  # asking for jobs does not undo a pause
    assert queue.paused() == "paused from the Jobs page" and len(no_worker) == asked
    widget(at, "button", "Resume the queue").click().run()
    assert queue.paused() is None and len(no_worker) == asked + 1
    # the crossed three-step variants follow from measured snapshots that hold their threshold
    assert "0 crossed variant(s) follow" in texts(at, "caption")
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    snap = VariantConfig.make("three_step", "conv4_x", base, encoder="none", bits=8, snapshot=0,
                              **PROFILES.get("smoke").prune.knobs())
    ResultsStore(fresh_cache / "results.sqlite").put({
        "id": snap.id, "method": "three_step", "split": "conv4_x", "base_id": base.id, "knobs": dict(snap.knobs),
        "accuracy": 0.5, "deployed_val_accuracy": 0.5, "val_accuracy": 0.5, "val_threshold": 0.4,
        "device_flops": 1.0, "bits_actual": 8.0})
    at.run()
    crossed = 2 * len(PROFILES.get("smoke").codings)  # snapshot 0 and the unpruned split, with each coding
    assert f"{crossed} crossed variant(s) follow" in texts(at, "caption")
    before = len(queue.jobs())
    widget(at, "button", "Queue the crossed variants").click().run()
    assert len(queue.jobs()) == before + crossed and f"Queued {crossed} crossed" in at.success[0].value


# -- export and import ------------------------------------------------------------------------------------------


def test_export_and_import_a_selection(measured: pd.DataFrame) -> None:
    row = measured[measured["split"] == "conv4_x"].iloc[0]
    at = run_page("export", sel=row["id"])
    assert row["id"] in texts(at, "markdown")
    labels = [b.proto.label for b in at.get("download_button")]
    for label in ("Selection (JSON)", "Results table (CSV", "PNG", "HTML"):
        assert any(x.startswith(label) for x in labels), label
    widget(at, "button", "Build the deployable bundle").click().run()
    assert not at.error, at.error[0].value if at.error else ""
    assert any(b.proto.label == "Bundle (.zip)" for b in at.get("download_button"))
    # import: another environment and this variant, as an exported file carries them
    doc = selection_json(row.to_dict(), {**{k: "" for k in ui.ENVIRONMENT_KEYS}, "profile": "smoke",
                                         "width": "0.125", "device": "pi3", "device_gflops": "5", "device_mb": "1000",
                                         "rate_kBps": "10", "drop": "3"})
    fresh = run_page("export")
    before = params(fresh)
    for bad in ("not json", json.dumps({**doc, "id": "0" * 16}), json.dumps({**doc, "version": 99}),
                '{"format": "coinfer-selection", "version": 1, "config": {"method": "__import__(\'os\')"}}',
                "[" * 100_000, "x" * 2_000_000):
        fresh.text_area(key="import_text").set_value(bad).run()
        assert not fresh.exception
        assert "invalid selection file" in fresh.error[-1].value and "nothing was changed" in fresh.error[-1].value
        assert params(fresh) == before
    # a knob its method cannot use is refused as `jobs submit` refuses it, even with the id recomputed
    from engine.deploy.selection import selection_document

    bits99 = VariantConfig.make("original", "conv4_x", row_config(row.to_dict()).base, bits=99)
    fresh.text_area(key="import_text").set_value(json.dumps(selection_document(bits99))).run()
    assert "knob bits must be in [1, 16]" in fresh.error[-1].value and "nothing was changed" in fresh.error[-1].value
    assert not [b for b in fresh.get("button") if b.proto.label.startswith("Measure it here")]
    fresh.text_area(key="import_text").set_value(json.dumps(doc)).run()
    widget(fresh, "button", "Apply this selection").click().run()
    assert not fresh.exception
    assert params(fresh)["sel"] == row["id"]
    applied = params(fresh)
    assert (applied["rate_kBps"], applied["device_gflops"], applied["drop"]) == ("10", "5", "3")
    assert "applied" in fresh.success[0].value
    shown = run_page(**applied)  # the sidebar shows the imported environment
    assert widget(shown, "select_slider", "Link rate").value == 10
    assert widget(shown, "number_input", "Device GFLOP/s").value == 5
    assert widget(shown, "slider", "Accuracy drop").value == 3


def test_figures_export_as_html_and_png(measured: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.figures import figure_html

    fig = plane_figure(measured, float(measured["png_bits"].iloc[0]))
    html = figure_html(fig).decode()
    assert "<html>" in html[:100] and "conv4_x" in html and "plotly" in html
    assert "Source Sans" in html and fig.layout.template.layout.font.family is None  # the page's look, on a copy
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    assert "Chromium" in png_export_problem()
    with pytest.raises(ui.UserError, match="HTML"):
        figure_png(fig)
    monkeypatch.undo()
    if png_export_problem() is not None:
        pytest.skip(png_export_problem())
    assert figure_png(fig, scale=1).startswith(b"\x89PNG")
