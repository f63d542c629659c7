"""Search against the grid: for each environment, a latency study on the profile's base model given the worker
minutes the crossed grid used, its best configuration at those minutes and at half of them, against the grid's best
row for the same environment (validation-chosen, test-reported). Grid rows are those the sweep measured (its jobs in
the job table, not a study's); minutes are charged by one rule for both (`engine.search.study.charged_seconds`: the
seconds that measured a row, and its pruning run once). A study already run is resumed, not repeated.
Run: python bench/bench_search.py [--profile quick] [--data PATH] [--envs pi3@10kB/s ...] [--workers 1]
[--sampler forecast|tpe] [--report-only] [--rescore] [--fraction 0.5] [--no-replay]

The studies run on a copy of the grid's cache, whose store holds every grid row: each row a study chooses holds its
worker for the seconds it is charged (`Search.run(replay=True)`), so that with several workers the study runs in the
order a cold store would allow."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402

from bench.common import DEFAULT_DATA, profile_data  # noqa: E402
from engine.config import BaseModelConfig  # noqa: E402
from engine.knobs import knob_text  # noqa: E402
from engine.latency import resolve_device, to_rate_bps  # noqa: E402
from engine.pareto import DEFAULT_ACCURACY_DROP, best_variant, validation_threshold  # noqa: E402
from engine.queue import JobQueue, WorkerOptions, interrupt_on_terminate  # noqa: E402
from engine.search import Environment, Search, SearchConfig, trial_table  # noqa: E402
from engine.search.objective import latency_of  # noqa: E402
from engine.search.study import charged_seconds, study_names  # noqa: E402
from engine.store import ResultsStore  # noqa: E402
from engine.sweep import sweep_jobs  # noqa: E402
from engine.units import format_seconds  # noqa: E402

# the paper's Pi 3 / RTX 2080 Ti presets at three rates, and an environment the grid was not planned for
ENVS = ("pi3@10kB/s", "pi3@40kB/s", "pi3@100kB/s", "2GFLOP/s,64MB@20kB/s")
# the knobs that tell one configuration of the table from another (a pruning run, its snapshot, the coding)
SHOWN = ("target", "hold_iterations", "output", "snapshot", "encoder", "bits", "enc_quantizer", "enc_d", "enc_bits",
         "enc_codebook", "enc_epochs", "enc_backbone")


def environment(text: str) -> Environment:
    """DEVICE@RATE, DEVICE a preset or SPEED[,MEMORY]; the server is the RTX 2080 Ti preset."""
    device, _, rate = text.partition("@")
    return Environment(resolve_device(device), resolve_device("rtx2080ti"), to_rate_bps(rate))


def grid_rows(base: BaseModelConfig, store: ResultsStore, queue: JobQueue) -> tuple[pd.DataFrame, float]:
    """The rows the sweep measured for `base` (its done jobs, `engine.sweep.sweep_jobs`: never a study's), in the
    order they were measured, each with the charged minutes spent when it landed (`worker_minutes`), and their
    charged seconds."""
    ids = {j.id for j in sweep_jobs(queue.jobs(status="done", base_id=base.id, reap=False), base.id)}
    rows = sorted((r for r in store.rows() if r["id"] in ids), key=lambda r: str(r.get("created_at", "")))
    runs: set[str] = set()
    total = 0.0
    for r in rows:
        run = r.get("prune_run")
        total += charged_seconds(r, bool(run) and run not in runs)
        runs.add(run)
        r["worker_minutes"] = total / 60
    return pd.DataFrame(rows), total


def rescored(table: pd.DataFrame, store: ResultsStore, env: Environment, need: float) -> pd.DataFrame:
    """The trial table with each complete trial's latency, feasibility (its device part fits and its validation
    accuracy is at least `need`) and accuracies read again from its row in the results store (rows measured again
    since the study ran, `bench/remeasure.py`), and the best so far recomputed."""
    out, best = table.copy(), math.inf
    for i, t in out.iterrows():
        row = store.get(str(t["variant_id"])) if t["state"] == "complete" else None
        if row is not None:
            lat = latency_of(row, env)
            val = row.get("deployed_val_accuracy")
            fits = lat["feasible"] and isinstance(val, int | float) and val >= need
            out.loc[i, ["latency", "feasible", "validation", "test"]] = [lat["latency"], fits, val, row.get("accuracy")]
        if t["state"] == "complete" and bool(out.loc[i, "feasible"]) and math.isfinite(float(out.loc[i, "latency"])):
            best = min(best, float(out.loc[i, "latency"]))
        out.loc[i, "best_latency"] = best if math.isfinite(best) else None
    return out


def grid_best_at(grid: pd.DataFrame, env: Environment, need: float, minutes: float) -> float:
    """The grid's best feasible latency among the rows it had measured within `minutes` charged (inf: none)."""
    best = best_variant(grid[grid["worker_minutes"] <= minutes + 1e-9], env.device, env.server, env.rate_bps, need)
    return math.inf if best is None else float(best["latency"])


def best_at(table: pd.DataFrame, minutes: float) -> pd.Series | None:
    """The study's best feasible trial within `minutes` charged (None when none)."""
    within = table[(table["worker_minutes"] <= minutes + 1e-9) & (table["state"] == "complete")
                   & table["feasible"].fillna(False).astype(bool)]
    return None if within.empty else within.sort_values(["latency", "number"]).iloc[0]


def config_name(r: pd.Series | None) -> str:
    """A row's configuration as the table names it: method, split, the knobs that tell it apart, its accuracy."""
    if r is None:
        return "none"
    acc = (f"{r['validation']:.2%} val, {r['test']:.2%} test" if "validation" in r
           else f"{r['deployed_val_accuracy']:.2%} val, {r['accuracy']:.2%} test")
    knobs = r.get("knobs")
    shown = knob_text({k: v for k, v in knobs.items() if k in SHOWN}) if isinstance(knobs, dict) else ""
    return f"{r['method']} {r['split']}{f' ({shown})' if shown else ''} ({acc})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="quick")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    p.add_argument("--sampler", choices=["forecast", "tpe"], default="forecast", help="what proposes the trials")
    p.add_argument("--report-only", action="store_true", help="read the studies as they stand; run nothing")
    p.add_argument("--rescore", action="store_true",
                   help="read each trial's figures again from the results store (after rows were measured again)")
    p.add_argument("--no-replay", dest="replay", action="store_false",
                   help="tell a configuration the store holds at once (by default it holds its worker for the seconds "
                        "it is charged, as on a cold store: `Search.run(replay=True)`)")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="run each study to this share of the grid's minutes (0.5: the half the table also reads)")
    args = p.parse_args(argv)
    interrupt_on_terminate()  # SIGTERM gives the running trials' jobs back, as Ctrl-C does
    logging.getLogger("optuna").setLevel(logging.WARNING)
    profile, _, base = profile_data(args.profile, args.data)
    store, queue = ResultsStore(), JobQueue()
    grid, grid_s = grid_rows(base, store, queue)
    if grid.empty:
        raise SystemExit(f"no sweep rows of base model {base.id}: run `python -m engine sweep --profile "
                         f"{args.profile}` first")
    need = validation_threshold(grid, DEFAULT_ACCURACY_DROP)
    minutes = grid_s / 60
    print(f"Base model {base.id} ({args.profile}); threshold {need:.2%} validation; the grid: {len(grid)} rows, "
          f"**{minutes:.1f} worker minutes** charged. Each study: budget {minutes * args.fraction:.1f} min, "
          f"{args.sampler} sampler, seed 0, "
          + ("as each was run (read only).\n" if args.report_only else f"{args.workers} worker(s).\n"))
    print("| environment | grid's best | its latency | minutes spent | search's best within the grid's minutes "
          "| latency | minutes to reach it | at half the minutes | latency | within 10 % "
          "| trials (complete / pruned / failed) |")
    print("|---|---|---:|---:|---|---:|---:|---|---:|:-:|---|")
    curves = []
    for text in args.envs:
        env = environment(text)
        cfg = SearchConfig(args.profile, base, env, "latency", DEFAULT_ACCURACY_DROP, sampler=args.sampler)
        if args.report_only and cfg.name not in study_names():  # reading creates no study
            print(f"| {text} | | | 0.0 | not run yet | | | | | | |")
            continue
        search = Search(cfg, data=args.data)
        if not args.report_only:
            options = WorkerOptions(threads=args.threads, console_level=logging.WARNING)
            search.run(workers=args.workers, budget_s=grid_s * args.fraction, options=options, replay=args.replay)
        table = trial_table(search.study.get_trials(deepcopy=False))
        if args.rescore and not table.empty:
            table = rescored(table, store, env, need)
        g = best_variant(grid, env.device, env.server, env.rate_bps, need)
        full, half = (best_at(table, minutes), best_at(table, minutes / 2)) if not table.empty else (None, None)
        states = table["state"].value_counts().to_dict() if not table.empty else {}
        reach = "–"
        if full is not None:
            hit = table[(table["best_latency"] <= full["latency"] + 1e-12)]
            reach = f"{hit['worker_minutes'].iloc[0]:.1f}" if not hit.empty else "–"
        ok = (half is not None and g is not None and half["latency"] <= 1.1 * g["latency"])

        spent = float(table["worker_minutes"].max()) if not table.empty else 0.0
        print(f"| {text} | {config_name(g)} | {format_seconds(g['latency']) if g is not None else '–'} | {spent:.1f} | "
              f"{config_name(full)} | "
              f"{format_seconds(full['latency']) if full is not None else '–'} | {reach} | {config_name(half)} | "
              f"{format_seconds(half['latency']) if half is not None else '–'} | {'yes' if ok else 'no'} | "
              f"{states.get('complete', 0)} / {states.get('pruned', 0)} / {states.get('fail', 0)} |")
        if not table.empty:
            curves.append((text, table))
    print("\nBest feasible latency against charged worker minutes (each study, and the grid in the order the sweep "
          "measured its rows):\n")
    marks = [m for m in (5, 10, 20, 30, 45, 60, 90, minutes) if m <= minutes + 1e-9]
    print("| environment | " + " | ".join(f"{m:.0f} min" for m in marks) + " |")
    print("|---|" + "---:|" * len(marks))
    for text, table in curves:
        cells, spent = [], float(table["worker_minutes"].max())
        for m in marks:
            b = best_at(table, m)
            cells.append("not yet" if m > spent + 1e-9 else
                         format_seconds(b["latency"]) if b is not None and math.isfinite(b["latency"]) else "–")
        print(f"| {text} | " + " | ".join(cells) + " |")
        grid_cells = [format_seconds(b) if math.isfinite(b := grid_best_at(grid, environment(text), need, m)) else "–"
                      for m in marks]
        print(f"| grid, {text} | " + " | ".join(grid_cells) + " |")


if __name__ == "__main__":
    main()
