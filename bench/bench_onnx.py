"""The device part at batch 1, onnxruntime against TorchScript, on this CPU: for the best variant of each method in
the results store (lowest modelled latency at --rate, device and server preset to this CPU's measured FLOP/s, within
--drop of the base model's accuracy), the median time of the bundle's device program per image under each runtime
(interleaved rounds, one thread each), whether they send the same symbols, and one end-to-end session of each
against `python -m engine serve`. When the store holds no row of --profile, it says so and measures the smoke
profile's `original` at conv4_x and conv5_x and `bottlenet_pp` at conv5_x instead (trained in minutes, rows kept in
memory, not stored).
Run: python bench/bench_onnx.py [--profile quick] [--data PATH] [--images 100] [--rounds 3] [--rate 40kB/s]"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench.bench_coinference import start_server  # noqa: E402
from bench.common import DEFAULT_DATA, profile_data  # noqa: E402
from engine.config import VariantConfig  # noqa: E402
from engine.deploy.bundle import load_bundle  # noqa: E402
from engine.deploy.client import DeviceClient  # noqa: E402
from engine.deploy.export import write_bundle  # noqa: E402
from engine.deploy.onnx_device import load_onnx_device  # noqa: E402
from engine.deploy.selection import row_config  # noqa: E402
from engine.deploy.timing import cpu_flops_per_s  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.latency import custom_device, to_rate_bps  # noqa: E402
from engine.methods import METHODS, RunContext  # noqa: E402
from engine.pareto import best_per_method  # noqa: E402
from engine.paths import cache_dir  # noqa: E402
from engine.store import ResultsStore, rows_to_frame  # noqa: E402


def smoke_rows(ctx: RunContext) -> pd.DataFrame:
    """`original` at conv4_x and conv5_x and `bottlenet_pp` at conv5_x on the smoke profile, measured in memory."""
    base = ctx.profile.base_config(ctx.data.fingerprint)
    cfgs = [VariantConfig.make("original", s, base, bits=8) for s in ("conv4_x", "conv5_x")]
    cfgs.append(METHODS.get("bottlenet_pp").variants(base, ["conv5_x"])[-1])
    return rows_to_frame([METHODS.get(c.method).run(c, ctx) for c in cfgs])


def bundle_for(row: pd.Series, ctx: RunContext) -> Path:
    """The variant's bundle under cache/bundles/, written again when missing, unreadable or without ONNX parts."""
    path = cache_dir() / "bundles" / str(row["id"])
    try:
        load_bundle(path)
        load_onnx_device(path)
    except UserError:
        write_bundle(row_config(row), ctx, path, metrics=row.to_dict())
    return path


def device_times(path: Path, images: torch.Tensor, rounds: int) -> tuple[float, float, float]:
    """Median ms per image of the device program under TorchScript and onnxruntime (rounds interleaved), and the
    share of symbols on which they agree."""
    bundle, onnx = load_bundle(path), load_onnx_device(path, threads=1)
    bundle.warm_up("device")
    onnx.warm_up()
    arrays = images.numpy()
    ts, ox = [], []
    for _ in range(rounds):
        ts.append(bundle.program_seconds(images)[0])
        ox.append(onnx.program_seconds(arrays))
    same = [np.mean(bundle.device_output(x).numpy() == onnx.device_output(a)) for x, a in zip(images, arrays,
                                                                                             strict=True)]
    return 1e3 * statistics.median(ts), 1e3 * statistics.median(ox), float(np.mean(same))


def sessions(path: Path, images: torch.Tensor, labels: list[int], rate: float) -> dict[str, object]:
    """One session of each runtime's device part against `serve` (one thread each)."""
    proc, address = start_server(path, 1)
    host, port = address.rsplit(":", 1)
    out: dict[str, object] = {}
    try:
        for name, part, x in (("torchscript", load_bundle(path), images),
                              ("onnx", load_onnx_device(path, threads=1), images.numpy())):
            with DeviceClient(part, host, int(port), rate) as client:
                out[name] = client.run(x, labels)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", default="40kB/s")
    parser.add_argument("--drop", type=float, default=0.02, help="accuracy drop allowed below the base model")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rate = to_rate_bps(args.rate)
    profile, data, base = profile_data(args.profile, args.data)
    table = ResultsStore().table()
    table = table[table["base_id"] == base.id] if not table.empty else table
    note = f"the results store's rows of the {profile.name} profile"
    if table.empty:
        note = (f"the results store holds no row of the {profile.name} profile (its models are not trained here): "
                "measured on the smoke profile instead, original at conv4_x / conv5_x and bottlenet_pp at conv5_x")
        profile, data, base = profile_data("smoke", args.data)
        table = smoke_rows(RunContext(data, profile, cache_dir()))
    ctx = RunContext(data, profile, cache_dir())
    shape = (data.channels, *data.image_size)
    cpu = custom_device(cpu_flops_per_s(base.width, shape, data.num_classes), name="this-cpu", label="this CPU")
    threshold = float(table["base_test_accuracy"].iloc[0]) - args.drop if profile.name != "smoke" else None
    best = best_per_method(table, cpu, cpu, rate, threshold)
    print(f"{note}; best variant of each method at {args.rate}; {args.images} test images, 1 thread per runtime, "
          f"median of {args.rounds} interleaved rounds; onnxruntime {__import__('onnxruntime').__version__}",
          flush=True)
    images, labels = data.test_x[: args.images], data.test_y[: args.images].tolist()
    results = []
    for _, row in best.iterrows():
        path = bundle_for(row, ctx)
        ts_ms, onnx_ms, same = device_times(path, images, args.rounds)
        reports = sessions(path, images, labels, rate)
        ts, ox = reports["torchscript"], reports["onnx"]
        results.append({"method": row["method"], "split": row["split"], "id": row["id"],
                        "torchscript_ms": ts_ms, "onnx_ms": onnx_ms, "speedup": ts_ms / onnx_ms,
                        "same_symbols_%": 100 * same,
                        "session_ts_median_ms": 1e3 * ts.median_s, "session_onnx_median_ms": 1e3 * ox.median_s,
                        "session_onnx_p95_ms": 1e3 * ox.p95_s, "session_onnx_device_ms": 1e3 * ox.mean("device_s"),
                        "accuracy_ts": ts.accuracy, "accuracy_onnx": ox.accuracy})
    out = pd.DataFrame(results)
    print(out.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
