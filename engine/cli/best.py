"""The `best` command: the best measured variant of each method for an edge environment (lowest latency among
feasible variants whose validation accuracy meets the threshold: by default the base model's validation accuracy
minus the dashboard's default drop)."""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd

from engine.cli.common import NARROWING, add_common, add_delay, add_memory, device_of, narrow
from engine.errors import UserError
from engine.pareto import DECISION_COLUMN, DEFAULT_ACCURACY_DROP


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `best` command.

    Args:
        subparsers: the command line's subcommands.
    """
    p = subparsers.add_parser("best", help="the best measured variant of each method for an edge environment "
                                           "(lowest latency among feasible variants meeting the accuracy threshold)",
                              description=f"The best measured variant of each method for an edge environment. "
                                          f"{NARROWING}")
    add_common(p)
    p.set_defaults(profile=None, seed=None)
    p.add_argument("--rate", required=True, help="link rate with a unit: 40kB/s, 1Mbit/s, 250kbps ...")
    p.add_argument("--device", default="pi3",
                   help="device preset, or SPEED[,MEMORY] of your own, e.g. 10GFLOP/s,512MB (default pi3)")
    p.add_argument("--server", default="rtx2080ti",
                   help="server preset, or SPEED[,MEMORY], e.g. 13TFLOP/s,11GB (default rtx2080ti)")
    add_delay(p, "added to every variant's latency")
    add_memory(p)
    need = p.add_mutually_exclusive_group()
    need.add_argument("--threshold", type=float,
                      help="minimum top-1 validation accuracy, a fraction such as 0.93 (default: the base model's "
                           f"validation accuracy minus {DEFAULT_ACCURACY_DROP * 100:g} points)")
    need.add_argument("--any-accuracy", action="store_true",
                      help="no accuracy requirement (rows without a validation figure still are never chosen)")
    p.add_argument("--bits", choices=("actual", "ideal"), default="actual",
                   help="bits per image: the real bitstream (default) or the ideal figure")
    p.add_argument("--base", help="only rows of this base model id (see `python -m engine results`)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")


def _print_table(best: pd.DataFrame, bits_column: str) -> None:
    """The best rows, formatted, and the overall best."""
    from engine.latency import PROPAGATION_COLUMN
    from engine.units import format_bits, format_flops, format_seconds

    shown = pd.DataFrame({
        "method": best["method"], "split": best["split"],
        "validation": best[DECISION_COLUMN].map("{:.2%}".format), "test": best["accuracy"].map("{:.2%}".format),
        "bits": best[bits_column].map(format_bits), "device": best["device_flops"].map(format_flops),
        "latency": best["latency"].map(format_seconds), "t_device": best["t_device"].map(format_seconds),
        "t_transmit": best["t_transmit"].map(format_seconds), "t_server": best["t_server"].map(format_seconds),
        "id": best["id"]})
    if PROPAGATION_COLUMN in best:
        delay = best[PROPAGATION_COLUMN].map(format_seconds)
        shown.insert(shown.columns.get_loc("t_server"), PROPAGATION_COLUMN, delay)
    print(shown.to_string(index=False))
    top = best.iloc[0]
    print(f"best: {top['method']} at {top['split']} ({top['id']}), latency {format_seconds(top['latency'])}")


def run(args: argparse.Namespace) -> int:
    """Print the best measured variant of each method at the given rate, device and server.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from engine.latency import PROPAGATION_COLUMN, resolve_device, to_rate_bps
    from engine.pareto import best_per_method
    from engine.store import ResultsStore
    from engine.units import format_rate

    rate, delay_s = to_rate_bps(args.rate), args.delay / 1e3
    device, server = device_of(args), resolve_device(args.server)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold is a fraction in [0, 1], got {args.threshold:g}; e.g. 0.93 for 93 %")
    table, narrowed, profile = narrow(ResultsStore().table(), args)
    if args.base:
        table = table[table["base_id"] == args.base]
    threshold = _threshold(table, args)
    bits_column = f"bits_{args.bits}"
    best = best_per_method(table, device, server, rate, threshold, bits_column, delay_s=delay_s)
    where = (f"{format_rate(rate)} ({format_rate(rate, 'bit')})" + (f", {args.delay:g} ms delay" if delay_s else "")
             + f", device {device.describe()}, server {server.describe()}"
             + (f", validation accuracy >= {threshold:.1%}" if threshold is not None else ""))
    if args.json:
        cols = ["method", "split", "id", DECISION_COLUMN, "accuracy", bits_column, "device_flops", "latency",
                "t_device", "t_transmit", *([PROPAGATION_COLUMN] if PROPAGATION_COLUMN in best else []), "t_server"]
        records = json.loads(best[cols].to_json(orient="records")) if not best.empty else []
        json.dump({"rate_bps": rate, "delay_s": delay_s, "device": device.name, "server": server.name,
                   "threshold": threshold, "bits_column": bits_column, "best": records[0] if records else None,
                   "per_method": records},
                  sys.stdout, indent=1)
        print()
        return 0
    if table.empty:
        print(f"no results{narrowed} yet: run `python -m engine sweep{profile}` first")
        return 0
    if best.empty:
        print(f"no measured variant fits at {where}: lower --threshold or measure more variants"
              + _unvalidated_note(table))
        return 0
    bases = table["base_id"].nunique() if "base_id" in table else 1
    if bases > 1:
        print(f"note: the table mixes rows of {bases} base models; narrow it with --profile (or --base ID)")
    print(f"best per method at {where} (chosen on validation accuracy; test accuracy reports):")
    _print_table(best, bits_column)
    return 0


def _threshold(table: pd.DataFrame, args: argparse.Namespace) -> float | None:
    """The least validation accuracy: --threshold, none with --any-accuracy, else the base model's validation
    accuracy minus the dashboard's default drop (None where no row carries it: such rows are never chosen)."""
    from engine.pareto import validation_threshold

    if args.any_accuracy or args.threshold is not None:
        return args.threshold
    return validation_threshold(table, DEFAULT_ACCURACY_DROP)


def _unvalidated_note(table: pd.DataFrame) -> str:
    """A hint when rows lack a validation figure (measured by an earlier release), else ""."""
    from engine.pareto import decision_accuracy

    missing = int(decision_accuracy(table).isna().sum())
    return (f"; {missing} row(s) have no validation figure and are never chosen: re-measure them "
            "(`python -m engine sweep`)" if missing else "")


COMMANDS = {"best": run}
