"""bench/run.py keeps the analysis outside its markers and replaces only the benchmark's own section."""

from __future__ import annotations

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
