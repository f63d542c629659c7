"""Commands of co-inference: `export` (the deployable bundle of a measured variant), `serve` (the edge server's
part, over TCP), `device` (the device's part, sending the bitstream over a rate-limited link) and `footprint` (the
device part's memory as deployed, measured per runtime)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.cli.common import (
    add_delay,
    data_path,
    message_bytes,
    port_int,
    positive_int,
    seconds,
    threads_int,
    writable_cache,
)
from engine.deploy.footprint import RUNTIMES
from engine.errors import UserError
from engine.profiles import PROFILES, profile_of, recipe_of
from engine.units import format_bytes


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export`, `serve`, `device` and `footprint` commands.

    Args:
        subparsers: the command line's subcommands.
    """
    from engine.deploy.protocol import DEFAULT_MAX_PAYLOAD

    p = subparsers.add_parser("export", help="write the deployable bundle of a variant in the results store")
    p.add_argument("--id", required=True, help="variant id (or its first characters), see `python -m engine results`")
    p.add_argument("--out", required=True, type=Path, help="bundle directory, or a .zip archive")
    p.add_argument("--data", help="dataset the variant was measured on (default: $COINFER_DATA, then cache/data/)")
    p.add_argument("--test-images", type=Path, metavar="FILE.npz",
                   help="also write the variant's first --images test images and labels, for `device --inputs`")
    p.add_argument("--images", type=positive_int, default=100,
                   help="test images written by --test-images (default 100)")
    p = subparsers.add_parser("serve", help="the edge server of co-inference: load a bundle's server part, answer "
                                            "over TCP")
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory or .zip from `python -m engine export`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    p.add_argument("--max-message", type=message_bytes, default=DEFAULT_MAX_PAYLOAD,
                   help="largest accepted message, bytes")
    p.add_argument("--read-timeout", type=seconds, default=60.0, metavar="SECONDS",
                   help="each message must arrive whole within this long of when the server starts waiting for it, "
                        "however slowly it trickles in (default 60)")
    p.add_argument("--max-devices", type=positive_int, default=32,
                   help="devices served at once (default 32); when full, the one waiting longest for a message "
                        "makes room for a newcomer")
    p.add_argument("--max-pending", type=positive_int, default=32,
                   help="connections held before their HELLO (default 32); when full, the one waiting longest makes "
                        "room for a newcomer")
    p.add_argument("--threads", type=threads_int, help="torch threads (default: torch's)")
    p = subparsers.add_parser("device", help="the device of co-inference: run a bundle's device part on test images "
                                             "and send the bitstream over a rate-limited link")
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory or .zip from `python -m engine export`")
    p.add_argument("--server", default="127.0.0.1:8765", help="HOST:PORT of `python -m engine serve`")
    p.add_argument("--rate", default="40kB/s", help="link rate enforced on the sender, e.g. 40kB/s, 1Mbit/s")
    add_delay(p, "each message is held that long before it is sent")
    p.add_argument("--images", type=positive_int, default=50, help="number of test images (default 50)")
    p.add_argument("--data", help="dataset (default: $COINFER_DATA, then cache/data/)")
    p.add_argument("--inputs", type=Path, metavar="FILE.npz",
                   help="test images from `export --test-images` instead of --data (with --runtime onnx: no torch)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torchscript",
                   help="run the device part as TorchScript (torch) or with onnxruntime (default torchscript)")
    p.add_argument("--threads", type=threads_int, help="torch's or onnxruntime's threads (default: theirs)")
    p.add_argument("--json", action="store_true", help="per-image timings and the summary as JSON on stdout")
    p = subparsers.add_parser("footprint", help="measure the device part's memory as deployed: the peak resident "
                                                "memory of a process that loads it and runs one image, per runtime")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--bundle", type=Path, help="a bundle directory or .zip: print its figures")
    which.add_argument("--id", nargs="+", metavar="ID", help="variants in the results store (ids or their first "
                                                             "characters): export each, measure it, keep the figures "
                                                             "in its row")
    which.add_argument("--base", metavar="BASE_ID", help="every variant of this base model in the results store "
                                                        "(its id from `python -m engine results --json`)")
    p.add_argument("--runtime", nargs="+", choices=RUNTIMES, default=list(RUNTIMES),
                   help="runtimes to measure (default both)")
    p.add_argument("--threads", type=threads_int, default=1, help="the runtime's threads (default 1)")
    p.add_argument("--again", action="store_true", help="measure rows that have their figures already")
    p.add_argument("--data", help="dataset the variants were measured on (default: $COINFER_DATA, then cache/data/)")


def _check_writable(path: Path | None) -> None:
    """A UserError, before any work, when `path` cannot be written: its folder cannot be made (a file is in the
    way, no permission) or it is an existing folder where a file goes."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; choose another place") from None
    if path.suffix in (".zip", ".npz") and path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; choose a file name") from None


def _cmd_export(args: argparse.Namespace) -> int:
    """Write the bundle of the one variant in the results store whose id starts with --id."""
    from engine.deploy.export import write_bundle, write_test_images
    from engine.store import ResultsStore

    row = _one_row(ResultsStore().rows(), args.id)
    for path in (args.out, args.test_images):
        _check_writable(path)
    if args.test_images is not None and args.images < 1:
        raise UserError(f"--images must be >= 1, got {args.images}")
    cfg, ctx = _row_context(row, args)
    out = write_bundle(cfg, ctx, args.out, metrics=row)
    print(f"bundle of {cfg.method} @ {cfg.split} ({cfg.id}) written to {out}")
    if args.test_images is not None:
        n = write_test_images(ctx.data, args.images, args.test_images)
        print(f"{n} test images written to {args.test_images}")
    return 0


def _one_row(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """The one row of the results store's `rows` whose id starts with `prefix`."""
    rows = [r for r in rows if str(r["id"]).startswith(prefix)]
    if len(rows) != 1:
        raise UserError(f"{'no' if not rows else len(rows)} variant(s) in the results store match {prefix!r}; "
                        "see `python -m engine results` for the ids")
    return rows[0]


def _row_context(row: dict[str, Any], args: argparse.Namespace, loaded: dict | None = None) -> tuple[Any, Any]:
    """A row's variant config and the run context that builds its deployed parts from the cached models: the data
    of --data cut as the row's profile cuts it (`loaded` keeps the data between rows of one command)."""
    from engine.data import load_data, subset
    from engine.deploy.selection import row_config
    from engine.methods import RunContext

    cfg = row_config(row)
    name = recipe_of(cfg.base)
    profile = PROFILES.get(name) if name is not None else profile_of(cfg.base)
    key = (profile.train_limit, profile.test_limit, cfg.base.seed)
    loaded = {} if loaded is None else loaded
    if key not in loaded:
        data = load_data(data_path(args), cache_dir=writable_cache())
        if profile.train_limit or profile.test_limit:
            data = subset(data, profile.train_limit, profile.test_limit, seed=cfg.base.seed)
        loaded[key] = data
    data = loaded[key]
    if data.fingerprint != cfg.base.dataset:
        raise UserError(f"variant {cfg.id} was measured on data {cfg.base.dataset}, this is {data.fingerprint}: "
                        "pass the same --data")
    return cfg, RunContext(data, profile, writable_cache())


def _footprint_text(footprints: list[Any]) -> str:
    return ", ".join(f"{f.runtime} {format_bytes(f.peak)} (the runtime alone {format_bytes(f.runtime_only)})"
                     for f in footprints)


def _cmd_footprint(args: argparse.Namespace) -> int:
    """Measure the device part's memory as deployed: of one bundle, or of rows of the results store (each exported
    to a temporary bundle, its figures kept in its row as `MEMORY_FIGURES` columns)."""
    import tempfile

    from engine.deploy.export import write_bundle
    from engine.deploy.footprint import measure_footprint
    from engine.latency import MEMORY_FIGURES
    from engine.store import ResultsStore

    if args.bundle is not None:
        found = [measure_footprint(args.bundle, r, args.threads) for r in args.runtime]
        print(f"{args.bundle.name}: {_footprint_text(found)}")
        return 0
    store = ResultsStore()
    stored = store.rows()  # read once, however many ids are named
    rows = [_one_row(stored, p) for p in args.id] if args.id else [r for r in stored if r.get("base_id") == args.base]
    if not rows:
        raise UserError(f"no variant of base model {args.base} in the results store; see `python -m engine results`")
    todo = [r for r in rows if args.again or any(not isinstance(r.get(MEMORY_FIGURES[k]), int | float)
                                                 for k in args.runtime)]
    print(f"{len(todo)} of {len(rows)} variant(s) to measure ({', '.join(args.runtime)}, {args.threads} thread(s))")
    loaded: dict = {}
    skipped = 0
    for i, row in enumerate(todo, 1):
        name = f"{row.get('method')} @ {row.get('split')} ({row['id']})"
        try:
            cfg, ctx = _row_context(row, args, loaded)
            with tempfile.TemporaryDirectory(prefix="coinfer-footprint-") as tmp:
                bundle = write_bundle(cfg, ctx, Path(tmp) / "bundle", metrics=row)
                found = [measure_footprint(bundle, r, args.threads) for r in args.runtime]
        except UserError as exc:  # one variant that cannot be exported or measured does not stop the others
            skipped += 1
            print(f"[{i}/{len(todo)}] {name}: skipped, {exc}")
            continue
        store.update(row["id"], {**{MEMORY_FIGURES[f.runtime]: float(f.peak) for f in found},
                                 "footprint_threads": args.threads})
        print(f"[{i}/{len(todo)}] {name}: {_footprint_text(found)}")
    if skipped:
        print(f"{skipped} variant(s) skipped (see above); the others' figures are in their rows")
    return 0


def _threads(args: argparse.Namespace) -> None:
    """Apply --threads to torch."""
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve a bundle's server part until Ctrl-C."""
    from engine.deploy.bundle import load_bundle
    from engine.deploy.server import CoinferenceServer

    _threads(args)
    bundle = load_bundle(args.bundle)
    server = CoinferenceServer(bundle, args.host, args.port, max_payload=args.max_message,
                               read_timeout=args.read_timeout, max_clients=args.max_devices,
                               max_pending=args.max_pending)
    host, port = server.address
    print(f"serving {bundle.meta['method']} @ {bundle.meta['split']} ({bundle.id}, {bundle.coding}) on {host}:{port}; "
          "Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"stopped after {server.stats.images} images from {server.stats.connections} connection(s)")
    finally:
        server.stop()
    return 0


def _device_part(args: argparse.Namespace) -> Any:
    """The bundle's device part for --runtime: a TorchScript `Bundle`, or an `OnnxDevice` (no torch imported)."""
    if args.runtime == "onnx":
        from engine.deploy.onnx_device import load_onnx_device

        return load_onnx_device(args.bundle, args.threads)
    from engine.deploy.bundle import load_bundle

    _threads(args)
    return load_bundle(args.bundle, side="device")


def _test_images(args: argparse.Namespace, part: Any) -> tuple[Any, list[int] | None]:
    """The first --images test images and labels: from --inputs (no torch), or from --data cut as the variant's
    profile cuts it."""
    if args.inputs is not None:
        from engine.deploy.onnx_device import read_inputs

        images, labels = read_inputs(args.inputs, part.meta["input_shape"])
        n = min(args.images, len(images))
        if args.runtime != "onnx":
            import torch

            images = torch.from_numpy(images)
        return images[:n], None if labels is None else [int(v) for v in labels[:n]]
    try:
        from engine.data import load_data, subset
    except ImportError as exc:
        raise UserError(f"reading --data needs torch ({exc}); on a device without it pass --inputs FILE.npz, "
                        "written by `python -m engine export --test-images FILE.npz`") from None

    data = load_data(data_path(args), cache_dir=writable_cache())
    profile = PROFILES.get(part.meta["profile"]) if part.meta.get("profile") in PROFILES else None
    if profile is not None and (profile.train_limit or profile.test_limit):
        data = subset(data, profile.train_limit, profile.test_limit, seed=part.config().base.seed)
    n = min(args.images, len(data.test_y))
    images = data.test_x[:n]
    return images.numpy() if args.runtime == "onnx" else images, data.test_y[:n].tolist()


def _cmd_device(args: argparse.Namespace) -> int:
    """Run a bundle's device part on test images against a server and print the timings."""
    from engine.deploy.client import DeviceClient
    from engine.deploy.link import parse_address
    from engine.latency import to_rate_bps

    if args.images < 1:
        raise UserError(f"--images must be >= 1, got {args.images}")
    host, port = parse_address(args.server)
    rate = to_rate_bps(args.rate)
    part = _device_part(args)
    images, labels = _test_images(args, part)
    with DeviceClient(part, host, port, rate, delay_s=args.delay / 1e3) as client:
        report = client.run(images, labels)
    if args.json:
        json.dump({"variant": part.id, "runtime": args.runtime, "rate_bps": rate, "median_s": report.median_s,
                   "p95_s": report.p95_s, "accuracy": report.accuracy, "wire_bytes": report.wire_bytes,
                   "images": report.rows()}, sys.stdout, indent=1)
        print()
    else:
        print(f"{part.meta['method']} @ {part.meta['split']} ({part.id}, {args.runtime}): {report.summary()}")
    return 0


COMMANDS = {"export": _cmd_export, "serve": _cmd_serve, "device": _cmd_device, "footprint": _cmd_footprint}
