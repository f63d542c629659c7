"""Commands that measure variants and read the results store: `run` (build and measure a method's variants) and
`results` (print the table)."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from engine.cli.common import NARROWING, Bar, add_common, chosen_splits, load, narrow, writable_cache


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
    fmt.add_argument("--export", metavar="FILE", help="write the rows with their provenance to a results file "
                                                      "(versioned JSON) that `python -m engine import` reads")
    p = subparsers.add_parser("import", help="merge a results file (from `results --export`) into the results store",
                              description="Merge a results file into the results store: a row stored with the same "
                                          "figures is skipped; a row stored with other figures refuses the whole file.")
    p.add_argument("file", help="the results file")


def _cmd_run(args: argparse.Namespace) -> int:
    """Measure a method's variants at the named splits, store the rows and print them."""
    from engine.methods import METHODS, RunContext
    from engine.models import split_names
    from engine.store import ResultsStore

    method = METHODS.get(args.method)
    profile, data, base = load(args)
    splits = chosen_splits(args, base) or split_names(base.model, coarse_only=True)
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

    store = ResultsStore()
    table, narrowed, profile = narrow(store.table(method=args.method), args)
    if args.export:
        from engine.exchange import write_results

        ids = set(table["id"])
        n = write_results([r for r in store.rows(args.method) if r["id"] in ids], args.export)
        print(f"wrote {n} rows{narrowed} to {args.export}")
    elif args.csv:
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


def _cmd_import(args: argparse.Namespace) -> int:
    """Merge a results file into the results store, all or nothing, and say how many rows were added and skipped."""
    from engine.exchange import import_rows, parse_results, read_file
    from engine.store import ResultsStore

    rows = parse_results(read_file(args.file), args.file)
    writable_cache()
    added, skipped = import_rows(rows, ResultsStore())
    print(f"imported {added} rows from {args.file}; skipped {skipped} already stored with the same figures")
    return 0


COMMANDS = {"run": _cmd_run, "results": _cmd_results, "import": _cmd_import}
