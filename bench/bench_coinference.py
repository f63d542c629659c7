"""Real co-inference against the latency model: for each link rate, the best variant of each method (lowest modelled
latency among those within `--drop` of the base model's test accuracy, under a device and server preset set to this
CPU's measured FLOP/s), exported as a bundle, served by `python -m engine serve` in a second process and driven by a
device client in this one over a token-bucket link. Per variant and rate: the paper's modelled terms F_dev / C +
B / R + F_srv / C (B the row's mean actual bits) beside the measured device program, entropy coding, paced send,
decoding, server program and end-to-end latency (mean, median, p95); the error of the paper's model against the
measured mean, and of the model with `engine.latency.Overheads`: the bundle's coding time measured offline (other
test images than the session's), the protocol's framing bytes and the runtime's fixed per-image cost measured by a
null session at the same rate (`engine.deploy.timing.runtime_overhead_s`); and of that model with each side's compute
slowed as this CPU's is after idling for the rest of the per-image period (`engine.deploy.timing.idle_slowdown`); and of
the last with the bundle's own device and server programs timed offline (`Bundle.program_seconds`) instead of F / C;
and of that one with the program times scaled to the CPU's speed measured just before the session and the runtime's
cost from a null session run just before it (this CPU's speed drifts over a run; the programs were timed and the
run-level null sessions run at other moments).
Run: python bench/bench_coinference.py [--profile quick] [--data PATH] [--rates 10kB/s 40kB/s 100kB/s]
                                       [--images 40] [--threads 1] [--drop 0.02] [--methods ...] [--splits conv4_x]
                                       [--ids ID ...]"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench.common import DEFAULT_DATA, profile_data  # noqa: E402
from engine.deploy.bundle import load_bundle  # noqa: E402
from engine.deploy.client import DeviceClient  # noqa: E402
from engine.deploy.export import write_bundle  # noqa: E402
from engine.deploy.selection import row_config  # noqa: E402
from engine.deploy.timing import (  # noqa: E402
    cold_coding_seconds,
    cpu_flops_per_s,
    idle_slowdown,
    modelled_latency,
    runtime_overhead_s,
)
from engine.errors import UserError  # noqa: E402
from engine.latency import Overheads, custom_device, to_rate_bps  # noqa: E402
from engine.methods import RunContext  # noqa: E402
from engine.pareto import best_per_method  # noqa: E402
from engine.paths import cache_dir  # noqa: E402
from engine.store import ResultsStore  # noqa: E402

METHODS = ("three_step", "original", "two_step_pruning", "bottlenet_pp")


def bundle_for(row: pd.Series, ctx: RunContext) -> Path:
    """The variant's bundle under cache/bundles/, written when missing or unreadable."""
    path = cache_dir() / "bundles" / str(row["id"])
    try:
        load_bundle(path)
    except UserError:
        write_bundle(row_config(row), ctx, path, metrics=row.to_dict())
    return path


def cold_model(deployed: dict[str, float], slowdown, device_s: float | None = None,  # noqa: ANN001
               server_s: float | None = None, coding_at=None, rounds: int = 4) -> dict[str, float]:  # noqa: ANN001
    """The deployed model's latency with each side's compute (its modelled term, or `device_s` / `server_s` when
    given) slowed by `slowdown` of the time that side idles per image (the rest of the per-image period, which is
    the modelled latency itself), and with `coding_at` the coding time measured after that idle time instead of
    the warm one: a fixed point. Returns its terms: latency, t_device, t_server, t_coding."""
    t_cod = deployed["t_coding"]
    others = deployed["latency"] - deployed["t_device"] - deployed["t_server"] - t_cod
    warm_dev = deployed["t_device"] if device_s is None else device_s
    warm_srv = deployed["t_server"] if server_s is None else server_s
    t_dev, t_srv = warm_dev, warm_srv
    for _ in range(rounds):
        period = others + t_dev + t_srv + t_cod
        t_dev = warm_dev * slowdown(period - t_dev)
        t_srv = warm_srv * slowdown(period - t_srv)
        if coding_at is not None:
            t_cod = coding_at(period - t_cod)
    return {"latency": others + t_dev + t_srv + t_cod, "t_device": t_dev, "t_server": t_srv, "t_coding": t_cod}


def start_server(bundle: Path, threads: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--bundle", str(bundle), "--port", "0",
                             "--threads", str(threads)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    line = proc.stdout.readline()
    if " on " not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stdout.read()}")
    return proc, line.split(" on ")[1].split(";")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--rates", nargs="+", default=["10kB/s", "40kB/s", "100kB/s"])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the device and of the server")
    parser.add_argument("--drop", type=float, default=0.02, help="accuracy drop allowed below the base model")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--splits", nargs="*", default=[],
                        help="also each method's best variant at these splits (the paper's Fig. 4 split: conv4_x)")
    parser.add_argument("--ids", nargs="*", default=[], help="variants to measure at every rate besides the best ones "
                                                              "(id prefixes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    profile, data, base = profile_data(args.profile, args.data)
    table = ResultsStore().table()
    table = table[(table["base_id"] == base.id) & table["method"].isin(args.methods)] if not table.empty else table
    if table.empty:
        raise SystemExit(f"no rows of base {base.id} in the results store: run `python -m engine sweep` first")
    shape = (data.channels, *data.image_size)
    measured = [cpu_flops_per_s(base.width, shape, data.num_classes) for _ in range(3)]
    flops = statistics.median(measured)
    cpu = custom_device(flops, name="this-cpu", label="this CPU")
    threshold = float(table["base_test_accuracy"].iloc[0]) - args.drop
    print(f"profile {profile.name}, base {base.id} (width {base.width:g}), test accuracy threshold {threshold:.2%}; "
          f"this CPU: {flops / 1e9:.2f} GFLOP/s at batch 1 with {args.threads} torch thread(s) (whole base model); "
          f"device and server preset to it (to pick the best variants); {args.images} test images per session",
          flush=True)
    ctx = RunContext(data, profile, cache_dir())
    plan: dict[str, tuple[pd.Series, list[float]]] = {}
    for rate_text in args.rates:
        rate = to_rate_bps(rate_text)
        for subset in [table, *(table[table["split"] == s] for s in args.splits)]:
            for _, row in best_per_method(subset, cpu, cpu, rate, threshold).iterrows():
                rates = plan.setdefault(str(row["id"]), (row, []))[1]
                if rate not in rates:
                    rates.append(rate)
    for prefix in args.ids:
        match = table[table["id"].str.startswith(prefix)]
        if len(match) != 1:
            raise SystemExit(f"--ids {prefix}: {len(match)} rows of this base match")
        for rate_text in args.rates:
            rates = plan.setdefault(str(match.iloc[0]["id"]), (match.iloc[0], []))[1]
            if to_rate_bps(rate_text) not in rates:
                rates.append(to_rate_bps(rate_text))
    x, y = data.test_x[: args.images], data.test_y[: args.images].tolist()
    results: list[dict] = []
    sessions: list[tuple[pd.Series, float, object, float, float]] = []  # row, rate, report, FLOP/s, runtime s
    coding: dict[str, float] = {}
    programs: dict[str, tuple[float, float, float]] = {}
    cold_coding: dict[str, Callable[[float], float]] = {}
    idle_grid = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
    for row, rates in plan.values():
        bundle_path = bundle_for(row, ctx)
        bundle = load_bundle(bundle_path)
        bundle.warm_up()
        coding[str(row["id"])] = bundle.coding_seconds(data.test_x[args.images: 2 * args.images])
        cold_coding[str(row["id"])] = cold_coding_seconds(bundle, data.test_x[args.images: args.images + 20],
                                                          idle_grid[:-1])
        timed_at = cpu_flops_per_s(base.width, shape, data.num_classes)  # the CPU's speed when they are timed
        programs[str(row["id"])] = (*bundle.program_seconds(data.test_x[args.images: 2 * args.images]), timed_at)
        proc, address = start_server(bundle_path, args.threads)
        try:
            host, port = address.rsplit(":", 1)
            for rate in rates:
                measured.append(cpu_flops_per_s(base.width, shape, data.num_classes))
                runtime_now = runtime_overhead_s(rate, images=args.images, input_shape=shape,
                                                 classes=data.num_classes)
                with DeviceClient(bundle, host, int(port), rate) as client:
                    report = client.run(x, y)
                sessions.append((row, rate, report, measured[-1], runtime_now))
                print(f"  {row['method']} @ {row['split']} at {rate / 8e3:g} kB/s: {report.summary()}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    flops = statistics.median(measured)
    print(f"this CPU over the run: {flops / 1e9:.2f} GFLOP/s (median of {len(measured)} measurements, "
          f"{min(measured) / 1e9:.2f} to {max(measured) / 1e9:.2f}); the model below uses it for both sides")
    runtime = {rate: runtime_overhead_s(rate, images=args.images, input_shape=shape, classes=data.num_classes)
               for rate in sorted({rate for _, rate, *_ in sessions})}
    print("runtime cost per image (null session): " +
          ", ".join(f"{1e3 * s:.2f} ms at {rate / 8e3:g} kB/s" for rate, s in runtime.items()))
    slowdown = idle_slowdown(idle_grid, base.width, shape, data.num_classes)
    print("the base model after an idle time, against warm (batch 1, median of 21): " +
          ", ".join(f"{slowdown(g):.2f}x after {1e3 * g:g} ms" for g in idle_grid))
    for row, rate, report, session_flops, runtime_now in sessions:
        model = modelled_latency(row, flops, flops, rate)
        coded = {**row.to_dict(), "coding_cpu_seconds": coding[str(row["id"])]}
        deployed = modelled_latency(coded, flops, flops, rate, overheads=Overheads(per_image_s=runtime[rate]))
        cold = cold_model(deployed, slowdown)["latency"]
        dev_s, srv_s, timed_at = programs[str(row["id"])]
        cold_programs = cold_model(deployed, slowdown, dev_s, srv_s)["latency"]
        speed = timed_at / session_flops  # > 1: the CPU runs slower in the session than when the programs were timed
        deployed_now = modelled_latency(coded, flops, flops, rate, overheads=Overheads(per_image_s=runtime_now))
        cold_now = cold_model(deployed_now, slowdown, dev_s * speed, srv_s * speed)["latency"]
        last = cold_model(deployed_now, slowdown, dev_s * speed, srv_s * speed, cold_coding[str(row["id"])])
        lat = np.array(report.latencies)
        results.append({
            "method": row["method"], "split": row["split"], "id": row["id"], "rate_kBps": rate / 8e3,
            "row_accuracy": row["accuracy"], "session_accuracy": report.accuracy,
            "bits_row": row["bits_actual"], "bits_wire": 8 * report.mean("wire_bytes"),
            "model_dev_ms": 1e3 * model["t_device"], "dev_ms": 1e3 * report.mean("device_s"),
            "model_coding_ms": 1e3 * deployed["t_coding"],
            "coding_ms": 1e3 * (report.mean("encode_s") + report.mean("decode_s")),
            "model_tx_ms": 1e3 * model["t_transmit"], "tx_ms": 1e3 * report.mean("transmit_s"),
            "model_srv_ms": 1e3 * model["t_server"], "srv_ms": 1e3 * report.mean("server_s"),
            "model_ms": 1e3 * model["latency"], "deployed_model_ms": 1e3 * deployed["latency"],
            "mean_ms": 1e3 * lat.mean(), "median_ms": 1e3 * np.median(lat), "p95_ms": 1e3 * np.percentile(lat, 95),
            "error_%": 100 * (lat.mean() - model["latency"]) / model["latency"],
            "deployed_error_%": 100 * (lat.mean() - deployed["latency"]) / deployed["latency"],
            "cold_model_ms": 1e3 * cold, "cold_error_%": 100 * (lat.mean() - cold) / cold,
            "offline_dev_ms": 1e3 * dev_s, "offline_srv_ms": 1e3 * srv_s,
            "programs_model_ms": 1e3 * cold_programs,
            "programs_error_%": 100 * (lat.mean() - cold_programs) / cold_programs,
            "session_gflops": session_flops / 1e9, "session_runtime_ms": 1e3 * runtime_now,
            "now_model_ms": 1e3 * cold_now,
            "now_error_%": 100 * (lat.mean() - cold_now) / cold_now,
            "cold_coding_ms": 1e3 * last["t_coding"], "last_model_ms": 1e3 * last["latency"],
            "last_error_%": 100 * (lat.mean() - last["latency"]) / last["latency"],
        })
    out = pd.DataFrame(results).sort_values(["rate_kBps", "model_ms"])
    print(out.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    errors = [c for c in out.columns if c.endswith("error_%")]
    print(f"within 15 % of the measured mean, of {len(out)} sessions: "
          + ", ".join(f"{c.removesuffix('_%')} {int((out[c].abs() <= 15).sum())}" for c in errors))
    print("median |error|: " + ", ".join(f"{c.removesuffix('_%')} {out[c].abs().median():.1f} %" for c in errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
