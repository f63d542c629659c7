import math

import pytest

from engine.errors import UserError
from engine.units import (
    format_bits,
    format_bytes,
    format_flops,
    format_rate,
    format_seconds,
    parse_bytes,
    parse_flops_rate,
    parse_rate,
)


@pytest.mark.parametrize(
    ("text", "bits_per_s"),
    [
        ("40kB/s", 320_000),
        ("40 kB/s", 320_000),
        ("40 KB/s", 320_000),
        ("40 kB / s", 320_000),
        ("40kBps", 320_000),
        ("1Mbit/s", 1e6),
        ("1 Mb/s", 1e6),
        ("500 bit/s", 500),
        ("500 bits/s", 500),
        ("2.5 Mbps", 2.5e6),
        ("100kbps", 1e5),
        ("1 MB/s", 8e6),
        ("1 Gbit/s", 1e9),
        ("3 bytes/s", 24),
        ("1 KiB/s", 8 * 1024),
        ("1 MiB/s", 8 * 1024**2),
        ("2 Mibit/s", 2 * 1024**2),
        ("1500", 1500),
        (" 1e6 ", 1e6),
        ("1.5e3 kbit/s", 1.5e6),
        (".5 kbit/s", 500),
        ("1 kbit", 1000),
        (2000, 2000),
        (12.5, 12.5),
    ],
)
def test_parse_rate(text, bits_per_s):
    assert parse_rate(text) == pytest.approx(bits_per_s, rel=1e-12)


@pytest.mark.parametrize(
    "text", ["0", "0 kB/s", "-5 kB/s", "", "fast", "40k", "40 kg/s", "kB/s", "nan", "1e400", "40 kB/s/s", None, True]
)
def test_parse_rate_rejects(text):
    with pytest.raises(UserError) as e:
        parse_rate(text)
    message = str(e.value)
    assert "\n" not in message
    assert "40kB/s" in message and "Mbps" in message


@pytest.mark.parametrize(
    ("bits_per_s", "unit", "text"),
    [
        (320_000, "B", "40 kB/s"),
        (500, "B", "62.5 B/s"),
        (8e6, "B", "1 MB/s"),
        (8 * 999_999, "B", "1 MB/s"),  # rounds up into the next prefix, never "1e+03 kB/s"
        (8 * 123_456, "B", "123 kB/s"),
        (320_000, "bit", "320 kbit/s"),
        (2.5e9, "bit", "2.5 Gbit/s"),
        (0, "B", "0 B/s"),
        (math.inf, "B", "∞ B/s"),
        (math.nan, "B", "n/a"),
    ],
)
def test_format_rate(bits_per_s, unit, text):
    assert format_rate(bits_per_s, unit=unit) == text


@pytest.mark.parametrize("bits_per_s", [1.0, 500.0, 320_000.0, 8 * 123_456.0, 3.3e7, 1.7e10])
def test_rate_round_trip(bits_per_s):
    for unit in ("B", "bit"):
        assert parse_rate(format_rate(bits_per_s, unit=unit)) == pytest.approx(bits_per_s, rel=5e-3)


def test_format_flops_bits_bytes():
    assert format_flops(1e6) == "1 MFLOPs"
    assert format_flops(1.8234e9) == "1.82 GFLOPs"
    assert format_flops(24e9, per_second=True) == "24 GFLOP/s"
    assert format_flops(13.45e12, per_second=True) == "13.4 TFLOP/s"  # 13.45 is stored as 13.4499...
    assert format_flops(13.45e12, per_second=True, digits=4) == "13.45 TFLOP/s"
    assert format_bits(12_345) == "12.3 kbit"
    assert format_bits(4) == "4 bit"
    assert format_bytes(1e9) == "1 GB"
    assert format_bytes(2**30, binary=True) == "1 GiB"
    assert format_bytes(1536, binary=True) == "1.5 KiB"
    assert format_bytes(0) == "0 B"
    assert format_bytes(-2000) == "-2 kB"


def test_format_seconds():
    assert format_seconds(1e6 / 24e9) == "41.7 µs"
    assert format_seconds(0.0125) == "12.5 ms"
    assert format_seconds(0.9996) == "1 s"
    assert format_seconds(2.5) == "2.5 s"
    assert format_seconds(12_345) == "12345 s"
    assert format_seconds(3e-9) == "3 ns"
    assert format_seconds(math.inf) == "∞ s"
    assert format_seconds(math.nan) == "n/a"


def test_parse_bytes_and_flops():
    assert parse_bytes("1 GB") == 1e9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("11e9") == 11e9
    assert parse_bytes("8 kbit") == 1000
    assert parse_flops_rate("24 GFLOP/s") == 24e9
    assert parse_flops_rate("13.45 TFLOPS") == pytest.approx(13.45e12)
    assert parse_flops_rate("5 Gflops") == 5e9
    assert parse_flops_rate("2.4e10") == 2.4e10
    for bad in ("1 G", "-1 GB", "lots", "0"):
        with pytest.raises(UserError):
            parse_bytes(bad)
    for bad in ("24 G", "fast", "-1 GFLOP/s", "24 GB/s"):
        with pytest.raises(UserError):
            parse_flops_rate(bad)
