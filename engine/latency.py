"""Device profiles and the end-to-end latency model of device-edge co-inference (Shao & Zhang 2020, Sec. "Case
study", Fig. 4), plus the capacity conventions for noisy channels (Fig. 5).

Latency of a variant: ``F_dev / C_dev + B / R + F_srv / C_srv`` with F the FLOPs of each part, C each side's
effective FLOP/s, B the bits per image and R the link rate in bits/s. A variant whose device part does not fit the
device memory is infeasible, not slow: it keeps its latency figures but `feasible` is False. An optional
propagation delay D (seconds, one way: device to server, as the runtime's `device --delay` holds each message
before sending it; the label's way back is not counted, as the paper does not count it) adds ``+ D`` to every
variant alike: it moves every latency, never which variant is best.

Beside the paper's model, never instead of it, `Overheads` adds what a deployed co-inference pays per image and the
model leaves out, each a measurement: the entropy coding time (encode + decode) measured for each row on the
machine that profiled it, the protocol's framing bytes on the uplink, and a fixed runtime cost (program calls,
pacing, the server's reply) measured with a null session (`engine.deploy.timing.runtime_overhead_s`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.deploy import protocol
from engine.errors import UserError
from engine.registry import Registry
from engine.units import format_bytes, format_flops, parse_bytes, parse_flops_rate, parse_rate

LATENCY_COLUMNS = ("t_device", "t_transmit", "t_server", "latency", "feasible")
PROPAGATION_COLUMN = "t_propagation"  # the propagation delay's term, in a table computed with a delay > 0
OVERHEAD_COLUMNS = ("t_coding", "t_overhead")
NEEDED_COLUMNS = ("device_flops", "server_flops", "device_memory_bytes")
# how a device's memory is counted against a row: "model", the profile's parameters + largest activations; a
# runtime, the measured peak resident memory of that runtime's device process (`engine.deploy.footprint`)
MEMORY_FIGURES = {"model": "device_memory_bytes", "torchscript": "device_rss_torchscript_bytes",
                  "onnx": "device_rss_onnx_bytes"}

ArrayLike = float | np.ndarray | pd.Series


@dataclass(frozen=True)
class DeviceProfile:
    """One side of the co-inference system: its effective compute speed and the memory a model may use."""

    name: str
    flops_per_s: float
    memory_bytes: float
    label: str = ""
    memory_figure: str = "model"  # a key of MEMORY_FIGURES: what a row's device part is counted as needing

    def __post_init__(self) -> None:
        if self.memory_figure not in MEMORY_FIGURES:
            raise UserError(f"device {self.name!r}: memory figure {self.memory_figure!r} is not one of "
                            f"{', '.join(MEMORY_FIGURES)}")
        if not (math.isfinite(self.flops_per_s) and self.flops_per_s > 0):
            raise UserError(f"device {self.name!r}: FLOP/s must be a positive finite number, got {self.flops_per_s}")
        if not (self.memory_bytes > 0):  # math.inf is allowed: no memory limit
            raise UserError(f"device {self.name!r}: memory must be a positive number of bytes, got {self.memory_bytes}")

    def describe(self) -> str:
        """A one-line summary for the UI: "Raspberry Pi 3 (24 GFLOP/s, 1 GB)"."""
        counted = "" if self.memory_figure == "model" else f" for the {self.memory_figure} process"
        return f"{self.label or self.name} ({format_flops(self.flops_per_s, per_second=True)}, " \
               f"{format_bytes(self.memory_bytes)}{counted})"

    def needs(self, table: pd.DataFrame) -> pd.Series:
        """What each row's device part needs of this device's memory (bytes): its `memory_figure`, the model's
        figure where a row has no measurement (NaN where it has neither).

        Args:
            table: results rows.
        Returns:
            bytes per row, aligned with `table`.
        """
        model = _numbers(table, MEMORY_FIGURES["model"])
        if self.memory_figure == "model":
            return model
        return _numbers(table, MEMORY_FIGURES[self.memory_figure]).fillna(model)


def _numbers(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table.columns:
        return pd.Series(np.nan, index=table.index, dtype="float64")
    return pd.to_numeric(table[column], errors="coerce").astype("float64")


DEVICES: Registry[DeviceProfile] = Registry("device")
# The paper's case study (Sec. "Case study"): "1 GB RAM and 24 GFLOP/s", "11 GB RAM and 13.45 TFLOP/s" (decimal GB).
DEVICES.add("pi3", DeviceProfile("pi3", 24e9, 1e9, "Raspberry Pi 3"))
DEVICES.add("rtx2080ti", DeviceProfile("rtx2080ti", 13.45e12, 11e9, "RTX 2080 Ti"))


def custom_device(flops_per_s: float | str, memory_bytes: float | str = math.inf, name: str = "custom",
                  label: str | None = None) -> DeviceProfile:
    """A user-defined device; speed and memory may be numbers or text such as "24 GFLOP/s" and "1 GB"."""
    return DeviceProfile(name, parse_flops_rate(flops_per_s), _memory(memory_bytes),
                         label if label is not None else name)


def _memory(value: float | str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isinf(value) and value > 0:
        return math.inf
    return parse_bytes(value)


def resolve_device(device: DeviceProfile | str) -> DeviceProfile:
    """A profile given as itself, as a `DEVICES` name, or as text "SPEED[,MEMORY]" for a machine of one's own.

    Args:
        device: e.g. "pi3", "10GFLOP/s,512MB" or "2.5 TFLOP/s" (memory unbounded when left out).
    Returns:
        the device profile; an unknown name or unreadable text is a UserError naming the presets and the form.
    """
    if isinstance(device, DeviceProfile):
        return device
    if device in DEVICES or not device.strip()[:1].replace(".", "0").isdigit():  # a name, not a number
        return DEVICES.get(device)
    speed, _, memory = device.partition(",")
    return custom_device(speed.strip(), memory.strip() or math.inf, label=device.strip())


def to_rate_bps(rate_bps: float | str) -> float:
    """A link rate in bits/s (number or text); +inf means a free link."""
    if isinstance(rate_bps, (int, float)) and not isinstance(rate_bps, bool) and rate_bps == math.inf:
        return math.inf
    return parse_rate(rate_bps)


def check_delay(delay_s: float) -> float:
    """A propagation delay in seconds, checked finite and >= 0.

    Args:
        delay_s: the one-way (device to server) propagation delay.
    Returns:
        It as a float; a UserError otherwise.
    """
    delay = float(delay_s)
    if not (math.isfinite(delay) and delay >= 0):
        raise UserError(f"the propagation delay must be a finite number of seconds >= 0, got {delay_s}")
    return delay


def _check_columns(table: pd.DataFrame, bits_column: str) -> None:
    missing = [c for c in (*NEEDED_COLUMNS, bits_column) if c not in table.columns]
    if missing:
        raise UserError(f"the results table lacks column(s) {', '.join(missing)}; re-profile the variants "
                        f"(python -m engine) or choose another bits column")


@dataclass(frozen=True)
class Overheads:
    """Per-image costs of a deployed co-inference that the paper's model omits: `coding` adds each row's measured
    entropy coding time (`coding_cpu_seconds`, 0 where a row has none), `framing_bits` cross the link with every
    image (by default the protocol's frame and feature headers and the payload's padding to a whole byte, at its
    most: a row's bits are the payload's own), `per_image_s` is the runtime's fixed cost."""

    per_image_s: float = 0.0
    framing_bits: float = 8.0 * protocol.FRAMING_BYTES + protocol.MAX_PADDING_BITS
    coding: bool = True

    def __post_init__(self) -> None:
        if not (self.per_image_s >= 0 and self.framing_bits >= 0):
            raise UserError(f"overheads are >= 0, got {self.per_image_s} s and {self.framing_bits} bits per image")


def latency_table(table: pd.DataFrame, device: DeviceProfile | str, server: DeviceProfile | str,
                  rate_bps: float | str, bits_column: str = "bits_actual",
                  overheads: Overheads | None = None, delay_s: float = 0.0) -> pd.DataFrame:
    """A copy of `table` with t_device, t_transmit, t_server, latency (seconds) and feasible (device memory fits)
    added. Missing figures give NaN times; a missing device memory makes a row infeasible (it cannot be shown
    to fit); the device's `memory_figure` says which figure is compared with its memory. The server's memory is not
    checked: the table does not profile the server part. With `overheads`,
    t_coding and t_overhead (framing on the link + the fixed cost) are added too, and counted in latency; with a
    propagation delay `delay_s` > 0 (seconds, one way), t_propagation likewise."""
    dev, srv, rate = resolve_device(device), resolve_device(server), to_rate_bps(rate_bps)
    delay = check_delay(delay_s)
    columns = LATENCY_COLUMNS + (OVERHEAD_COLUMNS if overheads is not None else ()) \
        + ((PROPAGATION_COLUMN,) if delay > 0 else ())
    if len(table) == 0:  # empty in, empty out, whatever its columns
        out = table.copy()
        for c in columns:
            out[c] = pd.Series(dtype=bool if c == "feasible" else "float64")
        return out
    _check_columns(table, bits_column)
    out = table.copy()
    num = {c: _numbers(out, c) for c in ("device_flops", "server_flops", bits_column)}  # memory: `dev.needs`
    out["t_device"] = num["device_flops"] / dev.flops_per_s
    out["t_transmit"] = num[bits_column] / rate
    out["t_server"] = num["server_flops"] / srv.flops_per_s
    out["latency"] = out["t_device"] + out["t_transmit"] + out["t_server"]
    if overheads is not None:
        coding = pd.to_numeric(out["coding_cpu_seconds"], errors="coerce").fillna(0.0).astype("float64") \
            if overheads.coding and "coding_cpu_seconds" in out.columns else 0.0
        out["t_coding"] = coding
        out["t_overhead"] = overheads.framing_bits / rate + overheads.per_image_s
        out["latency"] = out["latency"] + out["t_coding"] + out["t_overhead"]
    if delay > 0:
        out[PROPAGATION_COLUMN] = delay
        out["latency"] = out["latency"] + delay
    out["feasible"] = (dev.needs(out) <= dev.memory_bytes).astype(bool)
    return out


# -- noisy channels (Shao & Zhang 2020, Fig. 5) -----------------------------------------------------------------


def _out(x: np.ndarray) -> float | np.ndarray:
    return float(x) if np.ndim(x) == 0 else x


def _positive(x: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if np.any(~(arr > 0)):
        raise UserError(f"{what} must be positive, got {x}")
    return arr


def _probability(p: ArrayLike) -> np.ndarray:
    arr = np.asarray(p, dtype=float)
    if np.any(~((arr >= 0) & (arr <= 1))):
        raise UserError(f"a crossover probability is in [0, 1], got {p}")
    return arr


def awgn_capacity_bps(bandwidth_hz: ArrayLike, snr_db: ArrayLike) -> float | np.ndarray:
    """Shannon capacity of a complex-baseband AWGN channel with W channel uses per second: W log2(1 + SNR)."""
    w = _positive(bandwidth_hz, "the bandwidth (Hz)")
    snr = 10.0 ** (np.asarray(snr_db, dtype=float) / 10.0)
    return _out(w * np.log2(1.0 + snr))


def separate_coding_seconds(bits: ArrayLike, bandwidth_hz: ArrayLike, snr_db: ArrayLike) -> float | np.ndarray:
    """Seconds to send B bits with separate source and channel coding at the Shannon bound: B / (W log2(1+SNR))."""
    b = np.asarray(bits, dtype=float)
    with np.errstate(divide="ignore"):
        return _out(b / np.asarray(awgn_capacity_bps(bandwidth_hz, snr_db)))


def jscc_seconds(channel_uses: ArrayLike, bandwidth_hz: ArrayLike) -> float | np.ndarray:
    """Seconds for JSCC with k complex channel uses per image at W channel uses per second: k / W."""
    return _out(np.asarray(channel_uses, dtype=float) / _positive(bandwidth_hz, "the bandwidth (Hz)"))


def binary_entropy(p: ArrayLike) -> float | np.ndarray:
    """H2(p) = -p log2 p - (1-p) log2 (1-p) in bits, with H2(0) = H2(1) = 0."""
    arr = _probability(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -arr * np.log2(arr) - (1.0 - arr) * np.log2(1.0 - arr)
    return _out(np.where((arr == 0) | (arr == 1), 0.0, h))


def bsc_capacity(p: ArrayLike) -> float | np.ndarray:
    """Capacity of a binary symmetric channel with crossover probability p: 1 - H2(p) bits per channel bit."""
    return _out(1.0 - np.asarray(binary_entropy(p)))


def bsc_channel_bits(bits: ArrayLike, p: ArrayLike) -> float | np.ndarray:
    """Channel bits needed to send B bits over a BSC with separate coding at capacity: B / (1 - H2(p));
    infinite at p = 0.5, where the channel carries nothing."""
    cap = np.asarray(bsc_capacity(p))
    b = np.asarray(bits, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(cap > 0, b / np.where(cap > 0, cap, 1.0), np.where(b == 0, 0.0, np.inf))
    return _out(out)
