"""JSON from elsewhere, selections and results files alike: one line for every malformed input, never a traceback."""

from __future__ import annotations

import pytest

from engine.deploy.selection import parse_selection
from engine.errors import UserError
from engine.exchange import parse_results
from engine.untrusted import json_object

BAD = [
    ('{"a": 1', "not JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    ("[1, 2]", "top level must be a JSON object"),
    ('{"a": NaN}', "NaN is not a number JSON allows"),
    ('{"a": -Infinity}', "-Infinity is not a number JSON allows"),
    ('{"a": ' + "9" * 5000 + "}", "unreadable number"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("{}" + " " * (1 << 20), "over the 1,048,576-byte limit"),
]


@pytest.mark.parametrize(("raw", "message"), BAD)
def test_malformed_json_is_one_line(raw: str | bytes, message: str) -> None:
    with pytest.raises(UserError, match="^bad: ") as err:
        json_object(raw, 1 << 20, lambda m: UserError(f"bad: {m}"), "try again")
    assert message in str(err.value) and "\n" not in str(err.value) and str(err.value).endswith("try again")


@pytest.mark.parametrize("reader", [parse_selection, lambda raw: parse_results(raw, "upload.json")])
@pytest.mark.parametrize(("raw", "message"), BAD[:-1])
def test_selections_and_results_files_share_the_rules(reader, raw: str | bytes, message: str) -> None:  # noqa: ANN001
    with pytest.raises(UserError) as err:
        reader(raw if isinstance(raw, bytes) else raw.encode())
    assert message in str(err.value) and "\n" not in str(err.value)
