"""Units the explorer reads and shows: link rates, FLOPs, bits and bytes.

Decimal prefixes (k = 1e3, M = 1e6, G = 1e9, T = 1e12) unless a binary one is written (Ki = 1024, Mi = 1024**2,
...). B is a byte (8 bits), b a bit; the paper states its link rates in kB/s (Shao & Zhang 2020, Fig. 4).
"""

from __future__ import annotations

import math
import re

from engine.errors import UserError

_DECIMAL = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BINARY = {"ki": 2.0**10, "mi": 2.0**20, "gi": 2.0**30, "ti": 2.0**40}
_NUMBER = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(.*?)\s*$")
_PER_SECOND = re.compile(r"(?:\s*/\s*(?:s|sec|second)|(?<=[bB])ps)$", re.IGNORECASE)
_PREFIX = re.compile(r"^((?:[kmgt]i?)?)(.*)$", re.IGNORECASE)

RATE_FORMS = "40kB/s, 40 kB/s, 1Mbit/s, 2.5 Mbps, 100kbps, 1 MiB/s, or a bare number of bit/s (B = byte, b = bit)"
BYTES_FORMS = "1 GB, 512MiB, 11e9 B, or a bare number of bytes"
FLOPS_FORMS = "24 GFLOP/s, 13.45 TFLOPS, 2.4e10, or a bare number of FLOP/s"
DURATION_FORMS = "45min, 1.5h, 90s, 2 h, or a bare number of seconds"
_DURATION_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0,
                   "mins": 60.0, "minute": 60.0, "minutes": 60.0, "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
                   "hours": 3600.0}
MAX_DURATION_S = 366 * 86400.0  # a budget longer than a year is a typo


def _split_number(text: object) -> tuple[float, str] | None:
    """(value, rest) of a number followed by an optional unit, or None if there is no leading number."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text), ""
    if not isinstance(text, str):
        return None
    m = _NUMBER.match(text)
    return None if m is None else (float(m.group(1)), m.group(2))


def _prefix(token: str) -> tuple[float, str] | None:
    """(multiplier, rest) of a leading SI or binary prefix; k/K and m/M are read the same (no milli-bits)."""
    m = _PREFIX.match(token)
    assert m is not None  # the pattern matches any string
    key = m.group(1).lower()
    factor = _BINARY.get(key, _DECIMAL.get(key))
    return None if factor is None else (factor, m.group(2))


def _positive(value: float, text: object, what: str, forms: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{what} must be a positive finite number, got {text!r}; accepted forms: {forms}")
    return value


def parse_rate(text: str | float) -> float:
    """A link rate in bits/s from text such as "40kB/s", "2.5 Mbps", "1 MiB/s" or a bare number (bit/s)."""
    err = UserError(f"cannot read the rate {text!r}; accepted forms: {RATE_FORMS}")
    parsed = _split_number(text)
    if parsed is None:
        raise err
    value, rest = parsed
    unit = _PER_SECOND.sub("", rest).strip()
    pre = _prefix(unit)
    if pre is None:
        raise err
    factor, word = pre
    if word == "B" or word.lower() in ("byte", "bytes", "octet", "octets"):
        bits = 8.0
    elif word == "b" or word.lower() in ("bit", "bits") or (word == "" and factor == 1.0):
        bits = 1.0
    else:  # "40k" is ambiguous (the paper's kB/s or kbit/s?), so a prefix needs a unit
        raise err
    return _positive(value * factor * bits, text, "a link rate", RATE_FORMS)


def parse_duration(text: str | float) -> float:
    """A duration in seconds from text such as "45min", "1.5h", "90s" or a bare number (seconds)."""
    parsed = _split_number(text)
    factor = None if parsed is None else _DURATION_UNITS.get(parsed[1].strip().lower())
    if parsed is None or factor is None:
        raise UserError(f"cannot read the duration {text!r}; accepted forms: {DURATION_FORMS}")
    seconds = _positive(parsed[0] * factor, text, "a duration", DURATION_FORMS)
    if seconds > MAX_DURATION_S:
        raise UserError(f"the duration {text!r} is longer than a year; accepted forms: {DURATION_FORMS}")
    return seconds


def parse_bytes(text: str | float) -> float:
    """A memory size in bytes from text such as "1 GB", "512MiB" or a bare number of bytes."""
    err = UserError(f"cannot read the memory size {text!r}; accepted forms: {BYTES_FORMS}")
    parsed = _split_number(text)
    if parsed is None:
        raise err
    value, rest = parsed
    pre = _prefix(rest)
    if pre is None:
        raise err
    factor, word = pre
    if word in ("B", "") or word.lower() in ("byte", "bytes"):
        if word == "" and factor != 1.0:
            raise err
        return _positive(value * factor, text, "a memory size", BYTES_FORMS)
    if word == "b" or word.lower() in ("bit", "bits"):
        return _positive(value * factor / 8.0, text, "a memory size", BYTES_FORMS)
    raise err


def parse_flops_rate(text: str | float) -> float:
    """A compute speed in FLOP/s from text such as "24 GFLOP/s", "13.45 TFLOPS" or a bare number."""
    err = UserError(f"cannot read the compute speed {text!r}; accepted forms: {FLOPS_FORMS}")
    parsed = _split_number(text)
    if parsed is None:
        raise err
    value, rest = parsed
    unit = re.sub(r"\s*/\s*(?:s|sec|second)$", "", rest, flags=re.IGNORECASE).strip()
    m = re.fullmatch(r"([kmgt]?)(?:flops?)?", unit, flags=re.IGNORECASE)
    if m is None or (m.group(1) and unit == m.group(1)):
        raise err
    return _positive(value * _DECIMAL[m.group(1).lower()], text, "a compute speed", FLOPS_FORMS)


# -- formatting ---------------------------------------------------------------------------------------------

_UP = ("", "k", "M", "G", "T", "P", "E")
_UP_BINARY = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_DOWN = ("", "m", "µ", "n", "p")


def _mantissa(m: float, digits: int) -> str:
    text = f"{m:.{digits}g}"
    if "e" in text:  # .3g of 123456 is "1.23e+05"; keep plain notation
        text = f"{m:.0f}"
    return text


def _scaled(value: float, unit: str, *, digits: int = 3, binary: bool = False, small: bool = False,
            sep: str = " ") -> str:
    """`value` with the prefix that puts its mantissa in [1, base), `digits` significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    value = float(value)
    if math.isinf(value):
        return f"{'-' if value < 0 else ''}∞{sep}{unit}"
    if value == 0:
        return f"0{sep}{unit}"
    sign, mag = ("-" if value < 0 else ""), abs(value)
    base = 1024.0 if binary else 1000.0
    ups = _UP_BINARY if binary else _UP
    if small and mag < 1:
        i = 0
        while mag < 1 and i < len(_DOWN) - 1:
            mag *= 1000.0
            i += 1
        if float(f"{mag:.{digits}g}") >= 1000.0 and i > 0:
            mag, i = mag / 1000.0, i - 1
        return f"{sign}{_mantissa(mag, digits)}{sep}{_DOWN[i]}{unit}"
    i = 0
    while i < len(ups) - 1 and (mag >= base or float(f"{mag:.{digits}g}") >= base):
        mag /= base
        i += 1
    return f"{sign}{_mantissa(mag, digits)}{sep}{ups[i]}{unit}"


def format_rate(bits_per_s: float, unit: str = "B", digits: int = 3) -> str:
    """A link rate for people: "40 kB/s" (unit "B", as in the paper's Fig. 4) or "320 kbit/s" (unit "bit")."""
    if unit not in ("B", "bit"):
        raise ValueError(f"unit is 'B' or 'bit', got {unit!r}")
    value = bits_per_s / 8.0 if unit == "B" else bits_per_s
    return _scaled(value, f"{unit}/s", digits=digits)


def format_flops(flops: float, per_second: bool = False, digits: int = 3) -> str:
    """A FLOP count ("41.7 MFLOPs"; 2 FLOPs per multiply-add) or, with `per_second`, a speed ("24 GFLOP/s")."""
    return _scaled(flops, "FLOP/s" if per_second else "FLOPs", digits=digits)


def format_bits(bits: float, digits: int = 3) -> str:
    """A bit count: "12.3 kbit"."""
    return _scaled(bits, "bit", digits=digits)


def format_bytes(n_bytes: float, binary: bool = False, digits: int = 3) -> str:
    """A byte count: "1 GB", or with `binary` "1 GiB"."""
    return _scaled(n_bytes, "B", digits=digits, binary=binary)


def format_seconds(seconds: float, digits: int = 3) -> str:
    """A duration: "41.7 µs", "12.5 ms", "1.2 s" (no prefix above seconds)."""
    if seconds is not None and math.isfinite(float(seconds)) and abs(float(seconds)) >= 1:
        return f"{_mantissa(float(seconds), digits)} s"
    return _scaled(seconds, "s", digits=digits, small=True)
