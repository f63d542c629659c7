"""bench/run.py keeps the analysis outside its markers and replaces only the benchmark's own section, even when the
analysis is edited while a benchmark runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import run as bench_run
from bench.run import Bench, replace_section

BENCH = Bench("data", "Data load", ("bench/bench_data.py",))


def test_a_section_is_replaced_in_place_and_the_rest_kept() -> None:
    text = "# B\n\n## Data load\n\nanalysis before\n<!-- bench:data -->\nold\n<!-- /bench:data -->\nanalysis after\n"
    out = replace_section(text, BENCH, "new $1 \\1")  # replacement text is literal, not a regex template
    assert out == text.replace("old", "new $1 \\1")


def test_a_missing_section_is_appended_with_its_title() -> None:
    out = replace_section("# B\n", BENCH, "figures")
    assert out == "# B\n\n## Data load\n\n<!-- bench:data -->\nfigures\n<!-- /bench:data -->\n"
    assert replace_section(out, BENCH, "again").count("<!-- bench:data -->") == 1


def test_edits_made_while_a_benchmark_runs_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "BENCHMARKS.md"
    target.write_text("# B\n\nintro\n\n<!-- bench:data -->\nold figures\n<!-- /bench:data -->\n")

    def editing_run(bench: Bench, data: str) -> str:  # someone edits the analysis while the benchmark runs
        target.write_text(target.read_text().replace("intro", "intro edited meanwhile"))
        return "new figures"

    monkeypatch.setattr(bench_run, "BENCHMARKS", target)
    monkeypatch.setattr(bench_run, "run", editing_run)
    monkeypatch.setattr(sys, "argv", ["run.py", "--only", "data"])
    bench_run.main()
    text = target.read_text()
    assert "intro edited meanwhile" in text and "new figures" in text and "old figures" not in text


def test_a_section_s_headings_nest_under_the_heading_above_it() -> None:
    text = "# B\n\n## Width 1.0\n\n### Fig. 3\n\n<!-- bench:data -->\nold\n<!-- /bench:data -->\n"
    body = "intro\n\n### Pruning\n\n```\n# not a heading\n```\n\n#### Detail\n"
    out = replace_section(text, BENCH, body)
    assert "\n#### Pruning\n" in out and "\n##### Detail\n" in out and "\n# not a heading\n" in out
    assert replace_section(out, BENCH, body) == out  # rerunning leaves it as it is


def test_a_fenced_hash_line_above_the_section_is_not_taken_for_its_heading() -> None:
    text = "# B\n\n## Data load\n\n```\n# a shell comment\n```\n<!-- bench:data -->\nold\n<!-- /bench:data -->\n"
    assert "\n### Figures\n" in replace_section(text, BENCH, "## Figures\n")
