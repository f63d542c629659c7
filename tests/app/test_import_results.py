"""The export page imports results files: a bad file is one error and imports nothing; a good one lands in the store
with where it was measured, shown in the plane's hover, and one click queues the imported rows to be measured here."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cache_sharing_data, measured_original
from streamlit.testing.v1 import AppTest

from engine import exchange
from engine import queue as jobq
from engine.data import ImageData
from engine.exchange import results_document
from engine.profiles import PROFILES
from engine.store import ResultsStore

DASHBOARD = str(Path(__file__).resolve().parents[2] / "dashboard.py")


@pytest.fixture()
def travelled(tmp_path: Path, tmp_cache: Path, small_data: ImageData, shared_tar: Path,
              monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, list[str]]:
    """A results file of measured `original` rows, and an empty store beside the same trained models."""
    import json

    measured = measured_original(tmp_path / "there", tmp_cache, small_data)
    rows = ResultsStore(measured / "results.sqlite").rows()
    here = cache_sharing_data(tmp_path / "here", measured, ("data", "models"))
    monkeypatch.setenv("COINFER_CACHE", str(here))
    monkeypatch.setenv("COINFER_DATA", str(shared_tar))
    monkeypatch.setattr(jobq, "ensure_worker", lambda queue, idle_exit_s=300.0: None)
    return json.dumps(results_document(rows)).encode(), [r["id"] for r in rows]


def _page() -> AppTest:
    at = AppTest.from_file(DASHBOARD, default_timeout=90)
    at.query_params.update({"profile": "smoke", "width": "0.125", "page": "export"})
    at.run()
    assert not at.exception, at.exception[0].message if at.exception else ""
    return at


def _button(at: AppTest, label: str):  # noqa: ANN202 - a streamlit testing element
    found = [b for b in at.button if b.label.startswith(label)]
    assert found, f"no button {label!r}"
    return found[0]


def test_import_a_results_file_and_remeasure(travelled: tuple[bytes, list[str]]) -> None:
    raw, ids = travelled
    at = _page()
    uploader = at.file_uploader(key="results_file")
    uploader.set_value(("bad.json", raw[:-50], "application/json")).run()
    assert not at.exception
    assert "invalid results file" in at.error[-1].value and "nothing was imported" in at.error[-1].value
    assert len(ResultsStore()) == 0

    at.file_uploader(key="results_file").set_value(("travel.json", raw, "application/json")).run()
    assert not at.error, at.error[0].value
    _button(at, "Import these rows").click().run()
    assert not at.exception, at.exception[0].message if at.exception else ""
    assert f"Imported {len(ids)} rows" in at.success[0].value
    assert sorted(r["id"] for r in ResultsStore().rows()) == sorted(ids)
    assert all(r["imported_from"].startswith("travel.json") for r in ResultsStore().rows())

    _button(at, f"Re-measure the {len(ids)} imported rows here").click().run()
    assert not at.exception, at.exception[0].message if at.exception else ""
    queued = {j.id for j in jobq.JobQueue().jobs()}
    assert queued == set(ids)


@pytest.mark.parametrize("profile", exchange.example_profiles())
def test_a_fresh_machine_shows_the_example_results_in_one_click(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                profile: str) -> None:
    """No dataset, an empty cache: the first page offers each profile's shipped examples, and one click shows them
    on every page, marked as examples, at their profile and width."""
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COINFER_DATA", str(tmp_path / "no-dataset-here"))
    monkeypatch.setattr(jobq, "ensure_worker", lambda queue, idle_exit_s=300.0: None)
    at = AppTest.from_file(DASHBOARD, default_timeout=90)
    at.run()
    assert not at.exception
    _button(at, "Load the example results" + ("" if profile == "quick" else f" ({profile})")).click().run()
    assert not at.exception, at.exception[0].message if at.exception else ""
    assert at.query_params["profile"] == profile and at.query_params["data"]
    assert float(at.query_params["width"]) == PROFILES.get(profile).width
    assert any("example results" in i.value for i in at.info)
    assert len(ResultsStore().rows()) > 10
    for page in ("latency", "compare", "export"):  # no noisy-channel rows; the live page needs the dataset here
        other = AppTest.from_file(DASHBOARD, default_timeout=90)
        other.query_params.update({**dict(at.query_params), "page": page})
        other.run()
        assert not other.exception, (page, other.exception[0].message if other.exception else "")
        assert any("example results" in i.value for i in other.info), page
