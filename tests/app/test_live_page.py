"""AppTest of the live co-inference page: a short session of a stored variant against a local server, measured
latency beside the model's."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_pages import figures

from app.ui import Environment
from engine.config import VariantConfig
from engine.data import ImageData
from engine.latency import DEVICES
from engine.methods import METHODS, RunContext
from engine.profiles import PROFILES
from engine.store import ResultsStore

PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "live.py")
ENV = Environment("smoke", 0.125, DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 100e3 * 8, 0.5)


def run_page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["env"] = ENV
    return at.run()


def test_without_rows_the_page_says_what_to_do(fresh_cache: Path) -> None:
    at = run_page()
    assert not at.exception
    assert "No measured variants" in at.info[0].value


def test_live_session_is_drawn_against_the_model(fresh_cache: Path, tmp_cache: Path, small_data: ImageData) -> None:
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    RunContext(small_data, PROFILES.get("smoke"), tmp_cache).base(base)  # trained once per test session
    (fresh_cache / "models").mkdir()
    for f in (tmp_cache / "models").glob("base-*"):
        shutil.copy(f, fresh_cache / "models" / f.name)
    ctx = RunContext(small_data, PROFILES.get("smoke"), fresh_cache)
    cfg = VariantConfig.make("original", "conv5_x", base, bits=8)
    row = METHODS.get("original").run(cfg, ctx)
    ResultsStore(fresh_cache / "results.sqlite").put(row)
    at = run_page()
    assert not at.exception
    assert at.selectbox[0].value == row["id"]
    assert "Run live session" in at.info[0].value
    at.slider[0].set_value(6)
    at.button[0].click().run()
    assert not at.exception, at.exception
    charts = figures(at)
    traces = {t["name"]: t for t in charts[0]["data"]}
    assert len(traces["measured"]["y"]) == 6 and all(y > 0 for y in traces["measured"]["y"])
    terms = {(t["name"], y): x for t in charts[1]["data"] for x, y in zip(t["x"], t["y"], strict=True)}
    assert terms["transmit", "modelled"] == pytest.approx(row["bits_actual"] / ENV.rate_bps)
    assert terms["coding", "modelled"] > 0 and terms["coding", "measured"] > 0  # measured offline and in-session
    assert any("timed after idling" in c.value for c in at.caption)  # coding as a session runs it, once per image
    # the sidebar's propagation delay: each message is held that long, and the model counts it in the link's term
    at.session_state["env"] = dataclasses.replace(ENV, delay_s=0.02)
    at.run()
    assert "Run live session" in at.info[0].value  # the session of another link is not shown as this one's
    at.button[0].click().run()
    assert not at.exception, at.exception
    terms = {(t["name"], y): x for t in figures(at)[1]["data"] for x, y in zip(t["x"], t["y"], strict=True)}
    assert terms["transmit", "modelled"] == pytest.approx(row["bits_actual"] / ENV.rate_bps + 0.02)
    assert terms["transmit", "measured"] >= 0.02
    assert any("each message held 20 ms" in c.value for c in at.caption)
    assert terms["other", "modelled"] > 0  # framing bytes and the null session's runtime cost
    assert {"paper's model", "model with overheads"} <= set(traces)
    assert traces["model with overheads"]["y"][0] > traces["paper's model"]["y"][0]
    # the paced send takes at least the wire bytes over the rate
    assert terms["transmit", "measured"] >= 0.95 * terms["transmit", "modelled"]
    assert (fresh_cache / "bundles" / row["id"] / "manifest.json").is_file()
    labels = [m.label for m in at.metric]
    assert labels == ["Median latency", "Model with overheads", "p95 latency", "Accuracy", "Bytes on the wire"]
