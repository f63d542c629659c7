"""What real co-inference is measured against: this CPU's effective FLOP/s, the slowdown of a program run after
idling, a bundle's coding time, the runtime's fixed per-image cost (a null session), and the latency model's terms
(Shao & Zhang 2020: F_dev / C_dev + B / R + F_srv / C_srv) beside the measured ones."""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine.deploy.bundle import Bundle
from engine.deploy.client import SessionReport, live_session
from engine.latency import OVERHEAD_COLUMNS, PROPAGATION_COLUMN, Overheads, custom_device, latency_table

log = logging.getLogger(__name__)


def _traced_base(width: float, input_shape: tuple[int, int, int], classes: int) -> tuple[nn.Module, Any, torch.Tensor]:
    """The base ResNet18 of `width`, its TorchScript trace (as bundles run it) and a batch-1 input."""
    import warnings

    from engine.models import build_model

    model = build_model("resnet18", width, classes, input_shape[0]).eval()
    x = torch.zeros(1, *input_shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.jit.trace(model, x)
    return model, program, x


def cpu_flops_per_s(width: float = 0.25, input_shape: tuple[int, int, int] = (3, 32, 32), classes: int = 10,
                    repeats: int = 21) -> float:
    """This CPU's effective FLOP/s (2 per MAC) at batch 1 on the whole base ResNet18 of `width`, traced to TorchScript
    as bundles run it (about a third faster than eager on a CPU), with the current torch thread count: the device
    preset that makes the latency model describe this machine."""
    from engine.profile import count_flops, device_seconds

    model, program, x = _traced_base(width, input_shape, classes)
    return count_flops(model, x) / device_seconds(program, x, repeats=repeats, warmup=5)


def idle_slowdown(idle_s: Sequence[float], width: float = 0.25, input_shape: tuple[int, int, int] = (3, 32, 32),
                  classes: int = 10, repeats: int = 21) -> Callable[[float], float]:
    """How much longer the base model takes at batch 1 when called after sleeping, as a session calls its programs
    (once per image, idle for the rest of the pipeline): caches and clocks go cold. For each idle time of `idle_s`
    (seconds, > 0), the median over `repeats` of a cold call's time over the warm call just before its sleep (a
    ratio, so drifts of the CPU's speed cancel); returned as a function of the idle time, interpolated on log idle
    time from 1 at a tenth of the shortest, and held at the longest."""
    gaps = np.asarray(sorted(idle_s), dtype=float)
    if len(gaps) == 0 or gaps[0] <= 0:
        raise ValueError("idle_slowdown needs positive idle times")
    _, program, x = _traced_base(width, input_shape, classes)
    ratios = []
    with torch.no_grad():
        for _ in range(3):
            program(x)
        for gap in gaps:
            per = []
            for _ in range(repeats):
                program(x)
                start = time.perf_counter()
                program(x)
                warm = time.perf_counter() - start
                time.sleep(gap)
                start = time.perf_counter()
                program(x)
                per.append((time.perf_counter() - start) / warm)
            ratios.append(max(1.0, statistics.median(per)))
    return idle_curve(gaps, ratios, 1.0)


def idle_curve(idle_s: Sequence[float], values: Sequence[float], warm: float) -> Callable[[float], float]:
    """A quantity measured after each idle time of `idle_s` (rising, > 0) as a function of the idle time: `warm` at
    a tenth of the shortest, interpolated on log idle time between, held at the longest."""
    log_gaps, ys = np.log(np.r_[idle_s[0] / 10, idle_s]), np.r_[warm, values]

    def at(idle: float) -> float:
        return float(np.interp(math.log(max(idle, 1e-12)), log_gaps, ys))

    return at


def cold_coding_seconds(bundle: Bundle, images: torch.Tensor, idle_s: Sequence[float]) -> Callable[[float], float]:
    """The bundle's coding time per image (`Bundle.coding_seconds`) after each idle time of `idle_s` (seconds, > 0)
    and back to back, as a function of the idle time (`idle_curve`)."""
    gaps = sorted(float(g) for g in idle_s)
    if not gaps or gaps[0] <= 0:
        raise ValueError("cold_coding_seconds needs positive idle times")
    warm = bundle.coding_seconds(images)
    return idle_curve(gaps, [bundle.coding_seconds(images, g) for g in gaps], warm)


def modelled_latency(row: Mapping[str, Any], device_flops_per_s: float, server_flops_per_s: float, rate_bps: float,
                     delay_s: float = 0.0, overheads: Overheads | None = None) -> dict[str, float]:
    """The latency model's terms for a results row (seconds), by `engine.latency.latency_table`: F_dev / C_dev,
    B / R (+ the one-way propagation delay `delay_s`, which the client's paced send includes too), F_srv / C_srv
    and, with `overheads`, the measured coding time and the framing and runtime costs; `latency` is their sum."""
    table = pd.DataFrame([{"device_memory_bytes": math.nan, **dict(row)}])
    lat = latency_table(table, custom_device(device_flops_per_s, name="device"),
                        custom_device(server_flops_per_s, name="server"), rate_bps, overheads=overheads,
                        delay_s=delay_s).iloc[0]
    terms = {c: float(lat[c]) for c in ("t_device", "t_transmit", "t_server", *OVERHEAD_COLUMNS) if c in lat.index}
    terms["t_transmit"] += float(lat.get(PROPAGATION_COLUMN, 0.0))
    terms["latency"] = float(lat["latency"])
    return terms


NULL_BUNDLE_ID = "null-session"


class _NullDevice(nn.Module):
    """A device program that computes nothing and sends label 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 1, dtype=torch.int64)


def null_bundle(input_shape: tuple[int, int, int] = (3, 32, 32), classes: int = 10) -> Bundle:
    """An in-memory bundle whose programs compute nothing: its sessions measure the runtime alone."""
    from engine.methods.original import OneHotLogits

    meta = {"id": NULL_BUNDLE_ID, "coding": "label", "num_classes": classes, "input_shape": list(input_shape)}
    return Bundle(Path(NULL_BUNDLE_ID), {}, meta, {}, {}, torch.jit.script(_NullDevice()),
                  torch.jit.script(OneHotLogits(classes)), None)


def runtime_overhead_s(rate_bps: float, images: int = 50, input_shape: tuple[int, int, int] = (3, 32, 32),
                       classes: int = 10) -> float:
    """The fixed per-image cost of this runtime at `rate_bps`: the median end-to-end time of a null session (programs
    that compute nothing, a one-byte payload) against a local server, less the modelled time of its bytes on the
    link. It is what `engine.latency.Overheads.per_image_s` stands for: program calls, pacing, the reply."""
    x = torch.zeros(images, *input_shape, dtype=torch.uint8)
    report = live_session(null_bundle(input_shape, classes), x, None, rate_bps)
    wire_bits = 8.0 * report.mean("wire_bytes")
    return max(0.0, report.median_s - (wire_bits / rate_bps if math.isfinite(rate_bps) else 0.0))


def session_terms(report: SessionReport, model: Mapping[str, float]) -> pd.DataFrame:
    """A tidy table (term, source, seconds) of a session's mean measured terms beside the modelled ones: device
    (the device program), coding (entropy encoding + decoding), transmit (the paced send), server (the server
    program) and other (the rest of the end-to-end time: the reply, scheduling). The paper's model has no coding or
    other term (0 here); a model with `Overheads` has t_coding and t_overhead."""
    parts = {"device": report.mean("device_s"), "coding": report.mean("encode_s") + report.mean("decode_s"),
             "transmit": report.mean("transmit_s"), "server": report.mean("server_s")}
    measured = {**parts, "other": max(0.0, float(np.mean(report.latencies)) - sum(parts.values()))}
    modelled = {"device": model["t_device"], "coding": model.get("t_coding", 0.0), "transmit": model["t_transmit"],
                "server": model["t_server"], "other": model.get("t_overhead", 0.0)}
    return pd.DataFrame([{"term": k, "source": source, "seconds": v} for source, terms in
                         (("measured", measured), ("modelled", modelled)) for k, v in terms.items()])
