"""The `noisy` command: the paper's Fig. 5, JSCC against separate source and channel coding over AWGN and BSC
channels at conv4_x; rows go to the results store."""

from __future__ import annotations

import argparse

from engine.cli.common import Bar, add_common, chosen_splits, load, positive_float, writable_cache
from engine.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `noisy` command.

    Args:
        subparsers: the command line's subcommands.
    """
    p = subparsers.add_parser("noisy", help="the paper's Fig. 5: JSCC against separate source and channel coding "
                                            "over AWGN and BSC channels at conv4_x (or --splits S); rows go to the "
                                            "results store")
    add_common(p)
    p.add_argument("--channel", choices=("awgn", "bsc", "both"), default="both", help="which channel (default both)")
    p.add_argument("--force", action="store_true", help="measure again the variants already in the results store")
    p.add_argument("--drop", type=float, default=2.0, help="accuracy drop allowed below the base model, in points "
                                                           "(default 2)")
    p.add_argument("--bandwidth", type=positive_float, default=1e6,
                   help="AWGN channel uses per second W, Hz (default 1e6: the paper's 1 MHz)")


def run(args: argparse.Namespace) -> int:
    """Measure the Fig. 5 variants not yet in the results store and print the report.

    Args:
        args: the parsed command line.

    Returns:
        The exit status.
    """
    from engine.fig5 import fig5_plan, fig5_report, fig5_split, run_fig5
    from engine.methods import RunContext
    from engine.store import ResultsStore

    if not 0.0 <= args.drop < 100.0:
        raise UserError(f"--drop is in points, from 0 to 100, got {args.drop:g}")
    profile, data, base = load(args)
    split = (chosen_splits(args, base) or [fig5_split(base)])[0]
    channels = ("awgn", "bsc") if args.channel == "both" else (args.channel,)
    store = ResultsStore()
    bar = Bar(f"noisy {profile.name}")
    try:
        rows = run_fig5(RunContext(data, profile, writable_cache(), progress=bar), base, channels,
                        skip=() if args.force else store, on_row=store.put, split=split)
        bar(1.0, "done")
    finally:
        bar.close()
    table = store.table()
    planned = {cfg.id for cfg in fig5_plan(base, profile.budget_name, channels, split)}
    table = table[table["id"].isin(planned)] if not table.empty else table
    print(f"Fig. 5 at {split}, base model {base.id} (width {base.width:g}), {profile.name} profile: {len(rows)} "
          "variant(s) measured now, the rest from the results store (this profile's variants only, as the dashboard's "
          "Noisy channels page shows them by default)")
    print(fig5_report(table, channels, args.drop / 100, args.bandwidth))
    return 0


COMMANDS = {"noisy": run}
