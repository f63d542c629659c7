"""Results files: exported with provenance, imported all or nothing, and a bad file refused in one line with exit
status 2 (never a traceback; the hostile ones are in tests/hostile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from crafted import make_row

from engine import exchange
from engine import files as files_mod
from engine.cli import main
from engine.profiles import PROFILES
from engine.store import ResultsStore


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _export(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "results.json"
    exchange.write_results(rows, path)
    return path


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture, expected: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err


def test_the_document_is_versioned_with_provenance(tmp_path: Path) -> None:
    doc = json.loads(_export(tmp_path, [make_row(1)]).read_text())
    assert doc["format"] == "coinfer-results" and doc["version"] == 1
    assert {"cpu", "cores", "torch_threads", "gpu"} <= set(doc["machine"])
    assert {"exported_at", "code_version", "torch_version"} <= set(doc)
    row = doc["rows"][0]
    assert row["trained_on"] == "cpu, 2 threads" and row["measured_on"] == exchange.describe_machine(doc["machine"])


def test_import_then_again_skips(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    path = _export(tmp_path, [make_row(1), make_row(2)])
    assert main(["import", str(path)]) == 0
    assert "imported 2 rows" in capsys.readouterr().out
    stored = ResultsStore().get(make_row(1)["id"])
    assert stored["measured_on"] and stored["imported_from"].startswith("results.json, exported ")
    assert main(["import", str(path)]) == 0
    out = capsys.readouterr().out
    assert "imported 0 rows" in out and "skipped 2 already stored" in out


def test_timings_and_provenance_are_no_figures(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    ResultsStore().put(make_row(1, train_seconds=9.0, code_version="0.0.9"))
    assert main(["import", str(_export(tmp_path, [make_row(1), make_row(2)]))]) == 0
    assert "imported 1 rows" in capsys.readouterr().out


def test_a_conflicting_row_refuses_the_whole_file(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    ResultsStore().put(make_row(2, accuracy=0.1))
    path = _export(tmp_path, [make_row(1), make_row(2)])
    _one_line_exit_2(["import", str(path)], capsys, f"row {make_row(2)['id']} is stored here with other figures")
    assert len(ResultsStore()) == 1 and ResultsStore().get(make_row(1)["id"]) is None  # all or nothing


def test_oversized_is_refused_before_reading(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = _export(tmp_path, [make_row(i) for i in range(1, 20)])
    monkeypatch.setattr(exchange, "MAX_RESULTS_BYTES", 1000)
    monkeypatch.setattr(exchange.read_file, "__defaults__", (1000,))
    opened: list[int] = []
    real = files_mod.os.fdopen
    monkeypatch.setattr(files_mod.os, "fdopen", lambda *a, **k: opened.append(1) or real(*a, **k))
    _one_line_exit_2(["import", str(path)], capsys, "over the 1,000-byte limit")
    assert not opened  # refused on its size, nothing read


def test_export_narrows_like_results(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    store = ResultsStore()
    store.put_many([make_row(1), make_row(2, seed=1)])
    out = tmp_path / "seed1.json"
    assert main(["results", "--seed", "1", "--export", str(out)]) == 0
    assert "wrote 1 rows" in capsys.readouterr().out
    assert [r["id"] for r in json.loads(out.read_text())["rows"]] == [make_row(2)["id"]]


def test_hover_says_where_an_imported_row_was_measured() -> None:
    import pandas as pd

    from engine.figures import _hover_data, hover_text

    row = {**make_row(1), "measured_on": "Xeon, 16 cores, torch 4 threads"}
    assert "measured on Xeon" in hover_text(row) and "measured on" not in hover_text(make_row(2))
    _, head, _ = _hover_data(pd.DataFrame([row, make_row(2)]), "bits_actual")
    assert "measured on Xeon" in head.iloc[0] and "measured on" not in head.iloc[1]


def test_example_results_are_marked_as_such(tmp_path: Path, cache: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    path = _export(tmp_path, [make_row(1), make_row(2)])
    assert exchange.load_examples(store, path) == (2, 0)
    table = store.table()
    assert len(exchange.examples(table)) == 2
    assert table["imported_from"].str.startswith(exchange.EXAMPLE_MARK + ": results.json").all()
    other = ResultsStore(tmp_path / "other.sqlite")
    exchange.import_rows(exchange.parse_results(path.read_bytes(), "colleague.json"), other)
    assert len(exchange.examples(other.table())) == 0  # an import of one's own is no example



@pytest.mark.parametrize("profile", exchange.example_profiles())
def test_the_shipped_example_results_load_with_this_code(tmp_path: Path, profile: str) -> None:
    """Each examples file must stay readable by the current code: a schema change regenerates or migrates it
    (`python -m engine results --export examples/PROFILE-results.json --profile PROFILE`, README), and it holds one
    base model at its profile's width."""
    store = ResultsStore(tmp_path / "results.sqlite")
    added, skipped = exchange.load_examples(store, exchange.example_file(profile))
    table = store.table()
    assert added == len(table) > 10 and skipped == 0
    assert set(table["method"]) >= {"original", "three_step", "two_step_pruning"}  # the paper's plane, baselines
    assert table["deployed_val_accuracy"].notna().all()  # every row can be chosen on
    assert table["base_id"].nunique() == 1
    assert set(table["width"]) == {PROFILES.get(profile).width}


def test_the_examples_are_offered_for_the_profiles_whose_file_ships() -> None:
    assert "quick" in exchange.example_profiles()
    assert exchange.example_file("quick") == exchange.EXAMPLES_DIR / "quick-results.json"
    assert exchange.example_file("smoke") is None  # none ships for it
