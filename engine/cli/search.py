"""The `search` command: an Optuna study over split, pruning and coding that finds the best configuration for an
edge environment, its trials run as jobs of the queue (`engine.search`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from engine.cli.common import (
    Bar,
    add_common,
    add_delay,
    add_memory,
    data_path,
    device_of,
    load,
    number_type,
    positive_int,
    processes_int,
    seed_int,
)
from engine.errors import UserError
from engine.pareto import DEFAULT_ACCURACY_DROP

drop_points = number_type(float, lambda v: 0.0 <= v <= 100.0, "a number of points from 0 to 100")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `search` command.

    Args:
        subparsers: the command line's subcommands.
    """
    from engine.search import OBJECTIVES

    p = subparsers.add_parser(
        "search", help="search split, pruning and coding for the best configuration in an edge environment "
                       "(an Optuna study whose trials run as jobs; rerun the same command to resume it)",
        description="Search split, pruning and coding for an edge environment: `latency` minimises the modelled "
                    "end-to-end latency under the constraint validation accuracy >= the base model's minus --drop; "
                    "`front` keeps the front of device FLOPs, bits per image and validation accuracy. A "
                    "configuration already in the results store costs nothing; the same command resumes the study.")
    add_common(p)
    p.add_argument("--device", default="pi3", help="device preset, or SPEED[,MEMORY], e.g. 2GFLOP/s,64MB "
                                                   "(default pi3)")
    p.add_argument("--server", default="rtx2080ti", help="server preset, or SPEED[,MEMORY] (default rtx2080ti)")
    p.add_argument("--rate", required=True, help="link rate with a unit: 40kB/s, 1Mbit/s, 250kbps ...")
    add_delay(p, "added to every trial's latency")
    add_memory(p)
    p.add_argument("--drop", type=drop_points, default=DEFAULT_ACCURACY_DROP * 100,
                   help=f"allowed drop of validation accuracy below the base model's, in points (default "
                        f"{DEFAULT_ACCURACY_DROP * 100:g})")
    p.add_argument("--objective", choices=list(OBJECTIVES), default="latency",
                   help="latency (default): the fastest configuration within the threshold; front: device FLOPs, "
                        "bits and validation accuracy")
    p.add_argument("--budget", help="charged worker time the study may spend over its whole life, e.g. 45min or 2h "
                                    "(a configuration measured before costs no compute, but is charged the seconds "
                                    "that measured it, so that a budget means the same either way)")
    p.add_argument("--trials", type=positive_int, help="trials the study may hold over its whole life")
    p.add_argument("--method", action="append",
                   help="search this method's choices (repeatable; default three_step; the end points are always "
                        "among the choices)")
    p.add_argument("--workers", type=processes_int, default=1,
                   help="local worker processes for the study's jobs (default 1; 0: only queue them for "
                        "`python -m engine worker`)")
    p.add_argument("--scheduler", help="run the trials on the Dask cluster at this address, e.g. tcp://10.0.0.5:8786 "
                                       "(--workers trials in flight)")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="then re-run the best configuration with this many training seeds in all (its own row "
                        "included; the base model stays) and show the mean and spread of its accuracy (default 1)")
    p.add_argument("--sampler", choices=["auto", "forecast", "tpe"], default="auto",
                   help="what proposes the trials: forecast (best first by a latency forecast, stopping once no "
                        "configuration left is forecast to beat the best; a latency study of three_step), tpe "
                        "(Optuna's TPE), or auto (default): forecast where it applies, else tpe")
    p.add_argument("--study-seed", type=seed_int, default=0, help="the sampler's seed (default 0)")
    p.add_argument("--json", action="store_true", help="the summary as JSON on stdout")


def _line(summary: object) -> str:
    from engine.units import format_seconds

    states = ", ".join(f"{n} {s}" for s, n in sorted(summary.states.items()))  # type: ignore[attr-defined]
    best = summary.best  # type: ignore[attr-defined]
    where = "" if best is None else (f"; best #{best['number']} {best['method']} {best['split']} "
                                     + (f"{format_seconds(best['latency'])}" if best.get("latency") else ""))
    return f"{states}; {summary.charged_s / 60:.1f} worker min charged{where}"  # type: ignore[attr-defined]


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the study the options define and print its best configuration.

    Args:
        args: the parsed command line.
    Returns:
        The exit status.
    """
    from engine.latency import resolve_device, to_rate_bps
    from engine.search import Environment, Search, SearchConfig, trial_table
    from engine.units import parse_duration

    if args.budget is None and args.trials is None:
        raise UserError("give the search a budget (--budget 45min) or a number of trials (--trials 20)")
    budget_s = parse_duration(args.budget) if args.budget is not None else None
    env = Environment(device_of(args), resolve_device(args.server), to_rate_bps(args.rate),
                      args.delay / 1e3)
    if not args.verbose:
        logging.getLogger("optuna").setLevel(logging.WARNING)
    profile, _, base = load(args)
    cfg = SearchConfig(profile.name, base, env, args.objective, args.drop / 100.0,
                       tuple(dict.fromkeys(args.method or ["three_step"])), args.study_seed, args.sampler)
    from engine.search.launch import hold

    hold(cfg.name)  # held until this process ends
    search = Search(cfg, data=data_path(args))
    print(f"study {cfg.name}: {cfg.objective} at {args.rate}, device {env.device.describe()}, server "
          f"{env.server.describe()}, base model {base.id}, {len(search.study.trials)} trials so far",
          file=sys.stderr if args.json else sys.stdout, flush=True)
    bar = Bar(f"search {cfg.name}")
    last = [""]

    def on_update(summary: object) -> None:
        line = _line(summary)
        if line != last[0]:
            last[0] = line
            bar.write(line)

    try:
        summary = search.run(workers=args.workers, budget_s=budget_s, trials=args.trials, on_update=on_update,
                             scheduler=args.scheduler)
    finally:
        bar.close()
    table = trial_table(search.study.get_trials(deepcopy=False))
    if args.json:
        json.dump({"study": cfg.name, "config": cfg.key(), "states": summary.states, "charged_s": summary.charged_s,
                   "worker_s": summary.worker_s, "stopped_because": summary.stopped_because, "best": summary.best,
                   "trials": json.loads(table.to_json(orient="records"))}, sys.stdout, indent=1, default=str)
        print()
        return 0
    print(f"study {cfg.name} stopped after {summary.stopped_because or 'its trials'}: {_line(summary)}")
    best = summary.best
    if best is None:
        print("no trial meets the threshold yet: give it more budget or trials, or a larger --drop")
        return 0
    from engine.units import format_bits, format_flops, format_seconds

    print(f"best: trial {best['number']}, {best['method']} at {best['split']} ({best['variant_id']}), "
          f"latency {format_seconds(best['latency'])} (device {format_seconds(best['t_device'])}, link "
          f"{format_seconds(best['t_transmit'])}, server {format_seconds(best['t_server'])}); validation "
          f"{best['val_accuracy']:.2%}, test {best['test_accuracy']:.2%}; {format_bits(best['bits'])} per image, "
          f"{format_flops(best['device_flops'])} on the device")
    print(f"knobs: {json.dumps(best['knobs'], sort_keys=True)}")
    if args.seeds > 1:
        _replicate(search, args)
    return 0


def _replicate(search: object, args: argparse.Namespace) -> None:
    """Run the best configuration's replicates (`Search.replicates`) and print its mean and spread."""
    from engine import sweep
    from engine.report import replicate_spread
    from engine.search.study import SEARCH_PRIORITY

    specs = search.replicates(args.seeds)  # type: ignore[attr-defined]
    if specs:
        print(f"re-running it with {len(specs)} more training seed(s) ...", flush=True)
        planned = [sweep.Planned(spec, SEARCH_PRIORITY) for spec in specs]
        report = sweep.run(planned, queue=search.queue, store=search.store,  # type: ignore[attr-defined]
                           workers=max(1, args.workers), scheduler=args.scheduler)
        for job in report.failed:
            print(f"failed: {job.describe()}: {job.error}")
    best = search.summary().best  # type: ignore[attr-defined]
    spread = replicate_spread(search.store.rows(), best["variant_id"])  # type: ignore[attr-defined]
    if spread is None or spread["n"] < 2:
        print("its training is not seeded (an end point or `original`), or no replicate was measured")
        return
    print(f"over {spread['n']} training seeds: validation {spread['deployed_val_accuracy_mean']:.2%} "
          f"+- {spread['deployed_val_accuracy_std']:.2%} (range {spread['deployed_val_accuracy_min']:.2%} to "
          f"{spread['deployed_val_accuracy_max']:.2%}), test {spread['accuracy_mean']:.2%} +- "
          f"{spread['accuracy_std']:.2%}, {spread['bits_actual_mean']:.1f} +- {spread['bits_actual_std']:.1f} bits")


COMMANDS = {"search": run}
