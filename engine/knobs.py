"""Knobs typed by a person: `name=value` items, values read as JSON when they can be (4, 0.5, true, "x", [1, 2]),
else kept as text. One parser for the command line's `--knob` and the dashboard's knob field, so that both accept
and refuse the same items; and the check of knob values read from an imported selection."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from engine.errors import UserError

KNOB_EXAMPLE = "e.g. bits=4, sparsity=0.5"


def parse_knob(item: str) -> tuple[str, Any]:
    """One `name=value` item; spaces around the name and the value are dropped.

    Args:
        item: the text of one knob.

    Returns:
        The name and the value (JSON when it reads as JSON, else the text).

    Raises:
        UserError: without `=`, or with an empty name or value.
    """
    name, eq, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not eq or not name or not value:
        raise UserError(f"a knob is NAME=VALUE, got {item!r}; {KNOB_EXAMPLE}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def parse_knob_items(items: Iterable[str]) -> dict[str, Any]:
    """Knobs given one per item (the command line's repeated `--knob`); a value may hold commas ([0.1,0.2]).

    Args:
        items: `name=value` texts.

    Returns:
        The knobs by name (a later item wins).
    """
    return dict(parse_knob(item) for item in items)


def parse_knobs(text: str) -> dict[str, Any]:
    """Knobs typed in one field as `name=value, name=value` (commas or new lines between them).

    Args:
        text: the field's text; empty parts are skipped.

    Returns:
        The knobs by name.
    """
    return parse_knob_items(filter(None, (p.strip() for p in text.replace("\n", ",").split(","))))


def knob_text(knobs: Any) -> str:
    """Knobs as `name=value, name=value` (the form `parse_knobs` reads), for tables: a column of dicts whose values
    mix types (`snapshot` is 2 or "threshold") has no Arrow type.

    Args:
        knobs: a dict of knobs (anything else is shown with str()).

    Returns:
        The text, sorted by name.
    """
    return ", ".join(f"{k}={v}" for k, v in sorted(knobs.items())) if isinstance(knobs, dict) else str(knobs)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def is_knob_value(value: Any) -> bool:
    """Whether a knob value read from a file is plain: a JSON scalar or a flat list of them.

    Args:
        value: the decoded JSON value.

    Returns:
        True when it is.
    """
    return _is_scalar(value) or (isinstance(value, list) and all(_is_scalar(x) for x in value))
