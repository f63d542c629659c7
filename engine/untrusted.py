"""Reading JSON from elsewhere (an uploaded selection, a colleague's results file): capped before parsing, UTF-8
only, no NaN or Infinity, no unbounded nesting or numbers, and every problem one line that says what to do."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Reject = Callable[[str], Exception]


def json_object(raw: bytes | bytearray | str, max_bytes: int, reject: Reject, hint: str) -> dict[str, Any]:
    """The JSON object in `raw`.

    Args:
        raw: the untrusted bytes (or text).
        max_bytes: refuse anything longer, before parsing.
        reject: builds the error raised for a problem, from a one-line message.
        hint: what to do instead, appended to messages about the file's form (e.g. "upload the .json file
            coinfer exported").
    Returns:
        The decoded top-level object.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="replace")
    if not isinstance(raw, (bytes, bytearray)):
        raise reject(f"expected bytes or text, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise reject(f"{len(raw):,} bytes is over the {max_bytes:,}-byte limit; {hint}")

    def no_constant(name: str) -> Any:
        raise reject(f"{name} is not a number JSON allows; {hint}")

    try:
        doc = json.loads(bytes(raw).decode("utf-8"), parse_constant=no_constant)
    except UnicodeDecodeError:
        raise reject(f"not UTF-8 text; {hint}") from None
    except RecursionError:
        raise reject(f"nested too deeply; {hint}") from None
    except json.JSONDecodeError as exc:
        raise reject(f"not JSON ({exc.msg} at line {exc.lineno}; was it cut short?); {hint}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise reject(f"unreadable number ({str(exc).split(';')[0]}); {hint}") from None
    if not isinstance(doc, dict):
        raise reject(f"the top level must be a JSON object; {hint}")
    return doc
