"""A results file exported from one cache and imported into an empty one gives the same results table, each row
saying where it was measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main

IMPORT_COLUMNS = ("measured_on", "imported_from")


def _results_json(capsys: pytest.CaptureFixture) -> list[dict]:
    assert main(["results", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_exported_rows_import_into_an_empty_cache(fresh_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "original", "--profile", "smoke", "--split", "conv4_x", "--split", "server_only"]) == 0
    capsys.readouterr()
    source = _results_json(capsys)
    path = tmp_path / "travel.json"
    assert main(["results", "--profile", "smoke", "--export", str(path)]) == 0
    assert "wrote 3 rows" in capsys.readouterr().out

    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "elsewhere"))
    assert _results_json(capsys) == []
    assert main(["import", str(path)]) == 0
    assert "imported 3 rows" in capsys.readouterr().out
    imported = _results_json(capsys)
    assert [{k: v for k, v in r.items() if k not in IMPORT_COLUMNS} for r in imported] == source
    assert all(r["measured_on"] and r["imported_from"].startswith("travel.json") for r in imported)

    assert main(["import", str(path)]) == 0  # again: every row is there with the same figures
    assert "imported 0 rows" in capsys.readouterr().out
    assert _results_json(capsys) == imported
