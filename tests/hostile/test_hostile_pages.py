"""Hostile URL query parameters of the dashboard's pages: NaN, infinities and 5000-digit numbers where the sidebar
reads figures, unknown pages, profiles and presets, script tags, paths and very long lists where ids go. Each page
opens without an exception, falls back to its defaults, and writes nothing outside the cache. Streamlit's AppTest
on a tiny dataset with synthetic rows: a few cases, each a page."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from corpus import PROJECT_ROOT, Sandbox, sandbox_fixture, tiny_data_fixture  # noqa: F401 - fixtures
from streamlit.testing.v1 import AppTest

from engine.data import load_data, subset
from engine.profiles import PROFILES
from engine.store import ResultsStore

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from bench_pages import synthetic_rows  # noqa: E402

NUMBERS = {"rate_kBps": "nan", "device_gflops": "-inf", "device_mb": "9" * 5000, "server_gflops": "1e999",
           "server_mb": "0", "drop": "NaN"}
NAMES = {"device": "<script>alert(1)</script>", "server": "../../etc/passwd",
         "data": "../../etc/passwd", "bits": "rm -rf /", "below": "\x00", "front": "%00", "overheads": "maybe"}
IDS = {"sel": "'; DROP TABLE results; --", "pins": ",".join(["ffff"] * 2000), "splits": "conv9_x," * 300}

PAGES = {
    "plane": {**NUMBERS, **IDS},
    "latency": {**NAMES, **NUMBERS},
    "noisy": {**NAMES, "drop": "-5", "profile": "__import__('os')"},
    "live": {**IDS, "rate_kBps": "1e400"},
    "compare": {**IDS, **NAMES},
    "jobs": {**NUMBERS, **NAMES},
    "export": {**IDS, **NUMBERS, "width": "1e-300"},
    "search": {**IDS, **NUMBERS, **NAMES},
    "../../etc/passwd": {"sel": "x" * 100_000},
}


@pytest.fixture
def rows(sandbox: Sandbox, tiny_data: Path) -> None:
    """Synthetic rows of the smoke base model of the tiny dataset, in the sandbox's results store."""
    profile = PROFILES.get("smoke")
    data = subset(load_data(tiny_data, cache_dir=sandbox.cache), profile.train_limit, profile.test_limit, seed=0)
    base = profile.base_config(data.fingerprint)
    ResultsStore(sandbox.cache / "results.sqlite").put_many(synthetic_rows(base.id, 30,
                                                                           dataset_fingerprint=data.fingerprint))


@pytest.mark.parametrize("page", list(PAGES))
def test_a_page_opened_with_hostile_parameters_falls_back(page: str, rows: None, sandbox: Sandbox) -> None:
    sandbox.freeze()
    at = AppTest.from_file(str(PROJECT_ROOT / "dashboard.py"), default_timeout=120)
    at.query_params.update({"profile": "smoke", "width": "0.125", **PAGES[page], "page": page})
    at.run()
    assert not at.exception, at.exception[0].message if at.exception else ""
    assert not any("Traceback" in str(e.value) for e in at.error)
    sliders = {w.label: w.value for w in at.get("select_slider")}
    assert sliders.get("Link rate", 40) == 40  # NaN and 1e400 fall back to the default
