"""Commands of co-inference: `export` (the deployable bundle of a measured variant), `serve` (the edge server's
part, over TCP) and `device` (the device's part, sending the bitstream over a rate-limited link)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.cli.common import data_path, writable_cache
from engine.errors import UserError
from engine.profiles import PROFILES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export`, `serve` and `device` commands.

    Args:
        subparsers: the command line's subcommands.
    """
    from engine.deploy.protocol import DEFAULT_MAX_PAYLOAD

    p = subparsers.add_parser("export", help="write the deployable bundle of a variant in the results store")
    p.add_argument("--id", required=True, help="variant id (or its first characters), see `python -m engine results`")
    p.add_argument("--out", required=True, type=Path, help="bundle directory, or a .zip archive")
    p.add_argument("--data", help="dataset the variant was measured on (default: $COINFER_DATA, then cache/data/)")
    p = subparsers.add_parser("serve", help="the edge server of co-inference: load a bundle's server part, answer "
                                            "over TCP")
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory or .zip from `python -m engine export`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    p.add_argument("--max-message", type=int, default=DEFAULT_MAX_PAYLOAD, help="largest accepted message, bytes")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p = subparsers.add_parser("device", help="the device of co-inference: run a bundle's device part on test images "
                                             "and send the bitstream over a rate-limited link")
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory or .zip from `python -m engine export`")
    p.add_argument("--server", default="127.0.0.1:8765", help="HOST:PORT of `python -m engine serve`")
    p.add_argument("--rate", default="40kB/s", help="link rate enforced on the sender, e.g. 40kB/s, 1Mbit/s")
    p.add_argument("--delay", type=float, default=0.0, help="propagation delay per message, milliseconds")
    p.add_argument("--images", type=int, default=50, help="number of test images (default 50)")
    p.add_argument("--data", help="dataset (default: $COINFER_DATA, then cache/data/)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="per-image timings and the summary as JSON on stdout")


def _cmd_export(args: argparse.Namespace) -> int:
    """Write the bundle of the one variant in the results store whose id starts with --id."""
    from engine.data import load_data, subset
    from engine.deploy.export import write_bundle
    from engine.deploy.selection import row_config
    from engine.methods import RunContext
    from engine.store import ResultsStore

    store = ResultsStore()
    rows = [r for r in store.rows() if str(r["id"]).startswith(args.id)]
    if len(rows) != 1:
        raise UserError(f"{'no' if not rows else len(rows)} variant(s) in the results store match {args.id!r}; "
                        "see `python -m engine results` for the ids")
    row = rows[0]
    cfg = row_config(row)
    profile = next(PROFILES.get(n) for n in PROFILES if PROFILES.get(n).base_config(
        cfg.base.dataset, width=cfg.base.width, seed=cfg.base.seed) == cfg.base)
    data = load_data(data_path(args), cache_dir=writable_cache())
    if profile.train_limit or profile.test_limit:
        data = subset(data, profile.train_limit, profile.test_limit, seed=cfg.base.seed)
    if data.fingerprint != cfg.base.dataset:
        raise UserError(f"variant {cfg.id} was measured on data {cfg.base.dataset}, this is {data.fingerprint}: "
                        "pass the same --data")
    out = write_bundle(cfg, RunContext(data, profile, writable_cache()), args.out, metrics=row)
    print(f"bundle of {cfg.method} @ {cfg.split} ({cfg.id}) written to {out}")
    return 0


def _threads(args: argparse.Namespace) -> None:
    """Apply --threads to torch."""
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve a bundle's server part until Ctrl-C."""
    from engine.deploy.bundle import load_bundle
    from engine.deploy.server import CoinferenceServer

    _threads(args)
    bundle = load_bundle(args.bundle)
    server = CoinferenceServer(bundle, args.host, args.port, max_payload=args.max_message)
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


def _cmd_device(args: argparse.Namespace) -> int:
    """Run a bundle's device part on test images against a server and print the timings."""
    from engine.data import load_data, subset
    from engine.deploy.bundle import load_bundle
    from engine.deploy.client import DeviceClient
    from engine.deploy.link import parse_address
    from engine.latency import to_rate_bps

    _threads(args)
    bundle = load_bundle(args.bundle)
    host, port = parse_address(args.server)
    rate = to_rate_bps(args.rate)
    if args.images < 1:
        raise UserError(f"--images must be >= 1, got {args.images}")
    data = load_data(data_path(args), cache_dir=writable_cache())
    profile = PROFILES.get(bundle.meta["profile"]) if bundle.meta.get("profile") in PROFILES else None
    if profile is not None and (profile.train_limit or profile.test_limit):
        data = subset(data, profile.train_limit, profile.test_limit, seed=bundle.config().base.seed)
    n = min(args.images, len(data.test_y))
    with DeviceClient(bundle, host, port, rate, delay_s=args.delay / 1e3) as client:
        report = client.run(data.test_x[:n], data.test_y[:n].tolist())
    if args.json:
        json.dump({"variant": bundle.id, "rate_bps": rate, "median_s": report.median_s, "p95_s": report.p95_s,
                   "accuracy": report.accuracy, "wire_bytes": report.wire_bytes, "images": report.rows()},
                  sys.stdout, indent=1)
        print()
    else:
        print(f"{bundle.meta['method']} @ {bundle.meta['split']} ({bundle.id}): {report.summary()}")
    return 0


COMMANDS = {"export": _cmd_export, "serve": _cmd_serve, "device": _cmd_device}
