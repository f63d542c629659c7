"""Knob parsing shared by the command line and the dashboard, and the JSON-to-config decoding of knob values."""

from __future__ import annotations

import json

import pytest

from engine.config import BaseModelConfig, VariantConfig, frozen_value
from engine.errors import UserError
from engine.knobs import is_knob_value, knob_text, parse_knob, parse_knob_items, parse_knobs


def test_a_field_of_knobs_reads_json_values_and_keeps_other_text() -> None:
    assert parse_knobs("bits=4, sparsity=0.5,name=abc") == {"bits": 4, "sparsity": 0.5, "name": "abc"}
    assert parse_knobs("a=true\nb=null, c=\"x\"") == {"a": True, "b": None, "c": "x"}
    assert parse_knobs("") == {} and parse_knobs(" , \n") == {}
    assert parse_knobs(" bits = 4 ") == {"bits": 4}


def test_knob_text_reads_back() -> None:
    knobs = {"snapshot": "threshold", "bits": 8, "sparsity": 0.5}
    assert knob_text(knobs) == "bits=8, snapshot=threshold, sparsity=0.5" and knob_text(None) == "None"
    assert parse_knobs(knob_text(knobs)) == knobs


@pytest.mark.parametrize("item", ["bits", "bits=", "bits= ", "=4", " = 4"])
def test_a_knob_without_a_name_or_a_value_is_refused(item: str) -> None:
    with pytest.raises(UserError, match=r"^a knob is NAME=VALUE, got .*; e\.g\. bits=4") as err:
        parse_knob(item)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="NAME=VALUE"):
        parse_knobs(f"a=1, {item}")
    with pytest.raises(UserError, match="NAME=VALUE"):
        parse_knob_items(["a=1", item])


def test_one_knob_per_item_may_hold_commas() -> None:
    """The command line's repeated --knob: a list value keeps its commas; a later item wins."""
    assert parse_knob_items(["step1_levels=[0.1, 0.2]", "bits=4", "bits=8"]) == {"step1_levels": [0.1, 0.2],
                                                                                  "bits": 8}
    assert parse_knob("x=a=b") == ("x", "a=b")


def test_plain_knob_values() -> None:
    assert all(is_knob_value(v) for v in (None, True, 3, 0.5, "x", [], [1, "a", None]))
    assert not any(is_knob_value(v) for v in ({}, [[1]], [{"a": 1}], (1,), object()))


def test_frozen_value_turns_json_lists_into_tuples_and_keeps_the_id() -> None:
    assert frozen_value([1, [2, 3], {"a": [4]}]) == (1, (2, 3), {"a": (4,)})
    assert frozen_value({"a": [1], "b": 2}) == {"a": (1,), "b": 2} and frozen_value("x") == "x"
    base = BaseModelConfig("d" * 16, width=0.25, epochs=1, batch_size=8, lr=0.1, sizes=(16,))
    knobs = {"step1_levels": (0.1, 0.2), "per_stage": (("conv2_x", 0.5),)}
    cfg = VariantConfig.make("original", "conv4_x", base, **knobs)
    decoded = json.loads(json.dumps({"base": base.__dict__, "knobs": knobs}))
    again = VariantConfig.make("original", "conv4_x", BaseModelConfig(**decoded["base"]),
                               **frozen_value(decoded["knobs"]))
    assert again == cfg and again.id == cfg.id and hash(again) == hash(cfg)
