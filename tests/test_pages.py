"""AppTest of the dashboard's plane page: the figure shows what the store holds, for each state of the page."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.config import PROFILES
from engine.data import ImageData
from engine.methods import METHODS, RunContext
from engine.models import split_names
from engine.profile import profile_model
from engine.store import ResultsStore
from engine.train import make_model

DASHBOARD = str(Path(__file__).resolve().parents[1] / "dashboard.py")


def figure(at: AppTest) -> dict:
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def decoded(value: list | dict) -> list:
    """Plotly serialises numpy arrays as {"dtype", "bdata"} (base64); lists stay lists."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
    return list(value)


def traces(fig: dict) -> dict[str, dict]:
    return {t["name"]: {k: decoded(v) if k in ("x", "y", "text") else v for k, v in t.items()} for t in fig["data"]}


def run_page(width: str = "0.125") -> AppTest:
    at = AppTest.from_file(DASHBOARD, default_timeout=60)
    at.query_params["profile"] = "smoke"
    at.query_params["width"] = width
    return at.run()


def test_before_training_the_plane_shows_the_profile(fresh_cache: Path, small_data: ImageData) -> None:
    at = run_page()
    assert not at.exception
    assert "No measured variants" in at.info[0].value
    assert at.button[0].label.startswith("Train the base model")
    profile = PROFILES.get("smoke")
    base = profile.base_config(small_data.fingerprint)
    expected = {r["split"]: r for r in profile_model(make_model(base, small_data), (3, 32, 32), 10, split_names())}
    trace = traces(figure(at))["profile"]
    shown = dict(zip(trace["text"], zip(trace["x"], trace["y"], strict=True), strict=True))
    assert "server_only" not in shown  # 0 FLOPs: drawn as the PNG line, not a point on log axes
    for split, (x, y) in shown.items():
        assert x == expected[split]["device_flops"] and y == expected[split]["bits_8bit"]


def test_measured_rows_are_drawn_with_the_png_line(fresh_cache: Path, small_data: ImageData) -> None:
    profile = PROFILES.get("smoke")
    ctx = RunContext(small_data, profile, fresh_cache)
    method = METHODS.get("original")
    rows = [method.run(v, ctx) for v in method.variants(profile.base_config(small_data.fingerprint), split_names())]
    ResultsStore(fresh_cache / "results.sqlite").put_many(rows)
    at = run_page()
    assert not at.exception
    fig = figure(at)
    trace = traces(fig)["original"]
    by_split = {r["split"]: r for r in rows}
    for split, x, y in zip(trace["text"], trace["x"], trace["y"], strict=True):
        assert x == by_split[split]["device_flops"]
        assert y == pytest.approx(by_split[split]["bits_actual"])
        assert f"accuracy {by_split[split]['accuracy']:.2%}" in trace["hovertext"][trace["text"].index(split)]
    png = ctx.png_bits()
    assert any(s.get("type") == "line" and s["y0"] == pytest.approx(png) for s in fig["layout"]["shapes"])
    hollow = {s for s, sym in zip(trace["text"], trace["marker"]["symbol"], strict=True) if sym == "circle-open"}
    assert hollow == {s for s in trace["text"] if by_split[s]["bits_actual"] > png}
    at.toggle[0].set_value(True).run()
    trace = traces(figure(at))["original"]
    for split, y in zip(trace["text"], trace["y"], strict=True):
        assert y == pytest.approx(by_split[split]["bits_ideal"])
    # another width is another base model: its rows are not mixed in
    at = run_page(width="0.25")
    assert "original" not in traces(figure(at))


def test_without_data_the_page_says_how_to_provide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("COINFER_DATA", raising=False)
    at = run_page()
    assert not at.exception
    message = at.error[0].value
    for way in ("--data", "COINFER_DATA", "cache/data"):
        assert way in message
