"""Commands that measure variants and read the results store: `run` (build and measure a method's variants) and
`results` (print the table)."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from engine.cli.common import NARROWING, Bar, add_common, load, narrow, writable_cache


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `run` and `results` commands.

    Args:
        subparsers: the command line's subcommands.
    """
    p = subparsers.add_parser("run", help="build and measure a method's variants; rows go to the results store")
    add_common(p)
    p.add_argument("method", help="method name, e.g. original")
    p.add_argument("--split", action="append", help="split point (repeatable; default: the paper's split points)")
    p = subparsers.add_parser("results", help="print the results table",
                              description=f"The results table. {NARROWING}")
    add_common(p)
    p.set_defaults(profile=None, seed=None)
    p.add_argument("--method", help="only this method")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    fmt.add_argument("--json", action="store_true", help="JSON records on stdout")


def _cmd_run(args: argparse.Namespace) -> int:
    """Measure a method's variants at the named splits, store the rows and print them."""
    from engine.methods import METHODS, RunContext
    from engine.models import SPLIT_POINTS, split_names
    from engine.store import ResultsStore

    method = METHODS.get(args.method)
    splits = args.split or split_names(coarse_only=True)
    for s in splits:
        SPLIT_POINTS.get(s)
    profile, data, base = load(args)
    cache = writable_cache()
    store = ResultsStore()
    bar = Bar(args.method)
    ctx = RunContext(data, profile, cache, progress=bar)
    rows = []
    try:
        variants = method.variants(base, splits)
        for i, variant in enumerate(variants):
            bar(i / len(variants), f"{variant.split}")
            row = method.run(variant, ctx)
            store.put(row)
            rows.append(row)
        bar(1.0, "done")
    finally:
        bar.close()
    table = pd.DataFrame(rows)[["id", "split", "accuracy", "device_flops", "bits_actual", "bits_ideal"]]
    print(table.to_string(index=False))
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    """Print the (narrowed) results table as text, CSV or JSON."""
    from engine.store import ResultsStore, frame_to_csv, frame_to_json

    table, narrowed, profile = narrow(ResultsStore().table(method=args.method), args)
    if args.csv:
        frame_to_csv(table, sys.stdout)
    elif args.json:
        frame_to_json(table, sys.stdout, indent=1)
        print()
    elif table.empty:
        print(f"no results{narrowed} yet: run `python -m engine run original{profile}` or start a job from the "
              "dashboard")
    else:
        cols = [c for c in ("id", "method", "split", "width", "accuracy", "device_flops", "bits_actual", "bits_ideal",
                            "created_at") if c in table]
        print(table[cols].to_string(index=False))
    return 0


COMMANDS = {"run": _cmd_run, "results": _cmd_results}
