"""Hostile JSON from elsewhere: the rules every reader shares (`engine.untrusted`), selections (the Export page's
upload, a bundle's selection.json) and results files (`python -m engine import`): cut short, not UTF-8, NaN,
5000-digit integers, deep nesting, huge, wrong types, edited knobs with a recomputed id, code where a name goes. Each
is one line (exit status 2 for `import`), and nothing is stored or written outside the cache."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from corpus import Sandbox, one_line, run_main, sandbox_fixture, tiny_data_fixture  # noqa: F401 - fixtures
from crafted import make_row

from engine import exchange
from engine.config import VariantConfig, config_id
from engine.deploy.selection import MAX_SELECTION_BYTES, parse_selection, selection_document
from engine.errors import UserError
from engine.exchange import parse_results
from engine.profiles import PROFILES
from engine.store import ResultsStore
from engine.untrusted import json_object

BAD = {
    "cut short": ('{"a": 1', "not JSON"),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8"),
    "a list": ("[1, 2]", "top level must be a JSON object"),
    "NaN": ('{"a": NaN}', "NaN is not a number JSON allows"),
    "-Infinity": ('{"a": -Infinity}', "-Infinity is not a number JSON allows"),
    "5000 digits": ('{"a": ' + "9" * 5000 + "}", "unreadable number"),
    "nested 100,000 deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "over the size limit": ("{}" + " " * (1 << 20), "over the 1,048,576-byte limit"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_json_is_one_line(case: str) -> None:
    raw, message = BAD[case]
    with pytest.raises(UserError, match="^bad: ") as err:
        json_object(raw, 1 << 20, lambda m: UserError(f"bad: {m}"), "try again")
    line = one_line(str(err.value))
    assert message in line and line.endswith("try again")


@pytest.mark.parametrize("reader", ["selection", "results"])
@pytest.mark.parametrize("case", [c for c in BAD if c != "over the size limit"])
def test_selections_and_results_files_share_the_rules(reader: str, case: str) -> None:
    raw, message = BAD[case]
    read = parse_selection if reader == "selection" else lambda r: parse_results(r, "upload.json")
    with pytest.raises(UserError) as err:
        read(raw if isinstance(raw, bytes) else raw.encode())
    assert message in one_line(str(err.value))


# -- selections ----------------------------------------------------------------------------------------------------


def _selection() -> dict:
    cfg = VariantConfig.make("original", "conv5_x", PROFILES.get("smoke").base_config("0" * 16), bits=8)
    return selection_document(cfg, {"accuracy": 0.5, "trained_on": "cpu, 2 threads"}, {"device": "pi3"})


def _knobs(doc: dict, knobs: dict) -> dict:
    """The selection with other knobs and its id recomputed, as an attacker who edits one would."""
    config = {**doc["config"], "knobs": knobs}
    cfg = VariantConfig.make(config["method"], config["split"], VariantConfig.make(
        "original", "conv5_x", PROFILES.get("smoke").base_config("0" * 16), bits=8).base, **knobs)
    return {**doc, "config": config, "id": config_id(cfg)}


SELECTIONS: dict[str, Callable[[dict], dict | bytes]] = {
    "a pickle": lambda d: b"\x80\x04\x95 pickle?",
    "not JSON text": lambda d: b"{format: coinfer}",
    "over 1 MB": lambda d: b" " * (MAX_SELECTION_BYTES + 1),
    "wrong format": lambda d: {**d, "format": "something-else"},
    "wrong version": lambda d: {**d, "version": 2},
    "version as text": lambda d: {**d, "version": "1"},
    "version as bool": lambda d: {**d, "version": True},
    "id of another variant": lambda d: {**d, "id": "0123456789abcdef"},
    "edited knob": lambda d: {**d, "config": {**d["config"], "knobs": {"bits": 4}}},
    "bits 99 with the id recomputed": lambda d: _knobs(d, {"bits": 99}),
    "method as code": lambda d: {**d, "config": {**d["config"], "method": "__import__('os').system('id')"}},
    "unknown split": lambda d: {**d, "config": {**d["config"], "split": "conv9_x"}},
    "knob an object": lambda d: {**d, "config": {**d["config"], "knobs": {"bits": {"__class__": "x"}}}},
    "knob a nested list": lambda d: {**d, "config": {**d["config"], "knobs": {"bits": [[8]]}}},
    "extra base field": lambda d: {**d, "config": {**d["config"], "base": {**d["config"]["base"], "x": 1}}},
    "base field of the wrong type": lambda d: {**d, "config": {**d["config"], "base": {**d["config"]["base"],
                                                                                      "epochs": "1"}}},
    "negative width": lambda d: {**d, "config": {**d["config"], "base": {**d["config"]["base"], "width": -1}}},
    "a million epochs": lambda d: {**d, "config": {**d["config"], "base": {**d["config"]["base"], "epochs": 10**6}}},
    "metric as text": lambda d: {**d, "metrics": {"accuracy": "high"}},
    "trained_on an object": lambda d: {**d, "trained_on": {"device": "cpu"}},
    "config a list": lambda d: {**d, "config": [1, 2]},
    "NaN accuracy": lambda d: json.dumps(d).replace('"accuracy": 0.5', '"accuracy": NaN').encode(),
    "Infinity bits": lambda d: json.dumps(d).replace('"bits": 8', '"bits": Infinity').encode(),
    "-Infinity accuracy": lambda d: json.dumps(d).replace('"accuracy": 0.5', '"accuracy": -Infinity').encode(),
}


@pytest.mark.parametrize("case", list(SELECTIONS))
def test_a_hostile_selection_is_one_line(case: str) -> None:
    raw = SELECTIONS[case](_selection())
    with pytest.raises(UserError) as err:
        parse_selection(raw if isinstance(raw, bytes) else json.dumps(raw).encode())
    line = one_line(str(err.value))
    assert line.startswith("invalid selection file:") and len(line) < 400, line


def test_the_selection_the_cases_start_from_is_valid() -> None:
    assert parse_selection(json.dumps(_selection()).encode())["config"]["method"] == "original"


# -- results files -------------------------------------------------------------------------------------------------


def _doc(**change: object) -> str:
    doc = exchange.results_document([make_row(1)])
    doc.update(change)
    return json.dumps(doc)


def _row(**change: object) -> str:
    doc = exchange.results_document([make_row(1)])
    doc["rows"][0].update(change)
    return json.dumps(doc)


def _nested_rows(depth: int) -> str:
    return _doc().replace('"rows": [', '"rows": [' + "[" * depth + "]" * depth + ",", 1)


RESULTS: dict[str, tuple[Callable[[], str | bytes], str]] = {
    "cut short": (lambda: _doc()[:-40], "not JSON"),
    "wrong format": (lambda: _doc(format="coinfer-selection"), "format is 'coinfer-selection'"),
    "wrong version": (lambda: _doc(version=2), "version 2 is not supported"),
    "version as text": (lambda: _doc(version="1"), "version 1 is not supported"),
    "a list": (lambda: "[1, 2]", "top level must be a JSON object"),
    "rows not a list": (lambda: _doc(rows={"a": 1}), "'rows' must be a list"),
    "machine not an object": (lambda: _doc(machine="x"), "'machine' must be an object"),
    "a row not an object": (lambda: _doc(rows=[1]), "row 1 is not an object"),
    "no id": (lambda: _row(id=""), "row 1: result row needs non-empty string id"),
    "id a path": (lambda: _row(id="../../etc"), "is not a variant id"),
    "method as code": (lambda: _row(method="__import__('os')"), "unknown method"),
    "unknown split": (lambda: _row(split="conv9_x"), "unknown split 'conv9_x'"),
    "future schema": (lambda: _row(schema_version=99), "schema_version 99"),
    "created_at not a time": (lambda: _row(created_at="yesterday"), "created_at 'yesterday'"),
    "trained_on not text": (lambda: _row(trained_on=[1]), "trained_on must be text"),
    "NaN": (lambda: _row().replace('"accuracy": 0.51', '"accuracy": NaN'), "NaN is not a number JSON allows"),
    "5000 digits": (lambda: _row().replace('"seed": 0', '"seed": ' + "9" * 5000), "unreadable number"),
    "beyond 64 bits": (lambda: _row(seed=2**70), "integer beyond 64 bits"),
    "nested 100,000 deep": (lambda: _nested_rows(100_000), "nested too deeply"),
    "nested 50 deep": (lambda: _nested_rows(50), "nested too deeply"),
    "a string of 20,000 characters": (lambda: _row(note="x" * 20_000), "characters"),
    "a key of 300 characters": (lambda: _row(**{"k" * 300: 1}), "a key longer than 200 characters"),
    "not UTF-8": (lambda: b"\xff\xfe{}", "not UTF-8"),
    "a row twice with other figures": (lambda: _doc(rows=[make_row(1), {**make_row(1), "accuracy": 0.9}]),
                                       "appears twice"),
    "a file of 100 MB": (lambda: b"{" + b" " * (100 << 20) + b"}", "over the 67,108,864-byte limit"),
}


@pytest.mark.parametrize("case", list(RESULTS))
def test_a_hostile_results_file_is_one_line_and_exit_2(case: str, sandbox: Sandbox,
                                                       capsys: pytest.CaptureFixture) -> None:
    make, message = RESULTS[case]
    content = make()
    path = sandbox.inputs / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    sandbox.freeze()
    status, err = run_main(["import", str(path)], capsys)
    assert status == 2 and message in one_line(err), err
    assert not (sandbox.cache / "results.sqlite").exists() or len(ResultsStore()) == 0
