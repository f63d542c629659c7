"""A sweep's timings, read from the job table it ran in: wall time from the first job started to the last finished,
time to the first finished row, and per method the variants, their status and the worker seconds they took, with
the share of worker minutes that produced rows above the validation threshold.
Run after (or during) a sweep: python bench/bench_sweep.py [--profile quick] [--data PATH] [--jobs cache/jobs.sqlite]"""

from __future__ import annotations

import argparse
import calendar
import os
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from bench.common import DEFAULT_DATA, profile_data  # noqa: E402
from engine.pareto import DEFAULT_ACCURACY_DROP, meets_threshold, validation_threshold  # noqa: E402
from engine.profiles import PROFILES  # noqa: E402
from engine.queue import Job, JobQueue  # noqa: E402
from engine.store import ResultsStore  # noqa: E402
from engine.sweep import sweep_jobs  # noqa: E402


def summary(jobs: list[Job], above: set[str] | None = None) -> list[str]:
    """Markdown lines: the overall timings and one row per method; with `above` (the ids of rows that meet the
    validation threshold), the worker minutes of the jobs that produced them."""
    started = [j.started_at for j in jobs if j.started_at is not None]
    done = [j for j in jobs if j.status == "done" and j.finished_at is not None]
    if not started:
        return ["No job of this sweep has started yet."]
    t0 = min(started)
    last = max((j.finished_at for j in done), default=None)
    first = min((j.finished_at for j in done), default=None)
    lines = [f"{len(done)} of {len(jobs)} jobs done; wall time "
             + (f"**{(last - t0) / 60:.1f} min**" if last else "–")
             + " from the first job started to the last finished; first row after "
             + (f"**{first - t0:.0f} s**" if first else "–") + ".", "",
             "| method | variants | done | failed | queued or running | worker minutes (done) | slowest job min | "
             "rows above the threshold | their worker minutes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    total = useful = 0.0
    for method in sorted({j.spec.method for j in jobs}):
        mine = [j for j in jobs if j.spec.method == method]
        secs = [j.finished_at - j.started_at for j in mine if j.status == "done" and j.started_at and j.finished_at]
        count = {s: sum(j.status == s for j in mine) for s in ("done", "failed")}
        good = [j.finished_at - j.started_at for j in mine if j.status == "done" and j.started_at and j.finished_at
                and above is not None and j.id in above]
        total, useful = total + sum(secs), useful + sum(good)
        lines.append(f"| {method} | {len(mine)} | {count['done']} | {count['failed']} | "
                     f"{len(mine) - count['done'] - count['failed']} | {sum(secs) / 60:.1f} | "
                     f"{max(secs, default=0) / 60:.1f} | {'–' if above is None else len(good)} | "
                     f"{'–' if above is None else f'{sum(good) / 60:.1f}'} |")
    spans = [(j.started_at, j.finished_at) for j in done if j.started_at is not None]
    at_once, busy = occupancy(spans)
    if at_once:
        lines += ["", f"Jobs ran {at_once} at most at once; they kept that many workers busy **{100 * busy:.0f} %** of "
                  "the wall time (a job waiting on another's lock counts as busy)."]
    if above is not None and total:
        lines += ["", f"Rows above the threshold took **{useful / 60:.1f} of {total / 60:.1f} worker minutes "
                  f"({100 * useful / total:.0f} %)**; a job that trained a shared part (the base model, a pruning "
                  "run) counts its time, the variants that reuse it do not."]
    return lines


def occupancy(spans: list[tuple[float, float]]) -> tuple[int, float]:
    """How many of the (start, end) spans ran at most at once, and the share of that many workers' time over the
    spans' whole wall time (first start to last end) that they filled; (0, 0.0) without spans."""
    if not spans:
        return 0, 0.0
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    wall = max(b for _, b in spans) - min(a for a, _ in spans)
    return peak, (sum(b - a for a, b in spans) / (peak * wall) if wall > 0 else 1.0)


def above_threshold(base_id: str, drop: float) -> set[str] | None:
    """The ids of `base_id`'s stored rows whose validation accuracy meets the base's minus `drop`; None without
    a validation figure."""
    table = ResultsStore().table()
    table = table[table["base_id"] == base_id] if not table.empty else table
    threshold = None if table.empty else validation_threshold(table, drop)
    if threshold is None:
        return None
    return set(table["id"][meets_threshold(table, threshold)])


def utc_time(text: str) -> float:
    """A UTC time, ISO 8601 without a zone (YYYY-MM-DDTHH:MM[:SS]), as seconds since the epoch."""
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S" if text.count(":") == 2 else
                                             "%Y-%m-%dT%H:%M"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a UTC time YYYY-MM-DDTHH:MM[:SS]: {text!r}") from e


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--profile", default="quick", choices=list(PROFILES))
    parser.add_argument("--jobs", help="job table (default: the cache's)")
    parser.add_argument("--drop", type=float, default=DEFAULT_ACCURACY_DROP,
                        help="allowed validation accuracy drop below the base's (fraction, default 0.02)")
    parser.add_argument("--since", type=utc_time, default=None,
                        help="only jobs submitted at or after this UTC time (YYYY-MM-DDTHH:MM[:SS]): the sweep's, "
                             "where the table also holds earlier jobs of the same base model")
    parser.add_argument("--until", type=utc_time, default=None,
                        help="only jobs submitted at or before this UTC time (jobs added by hand after the sweep)")
    parser.add_argument("--all-jobs", action="store_true",
                        help="every job of the base model, not only the sweep's (`engine.sweep.sweep_jobs`: those it "
                             "tagged where it tagged any, else the untagged ones; never a study's)")
    args = parser.parse_args(argv)
    profile, data, base = profile_data(args.profile, args.data)
    jobs = [j for j in JobQueue(args.jobs).jobs(base_id=base.id, reap=False) if j.kind == "variant"
            and (args.since is None or j.submitted_at >= args.since)
            and (args.until is None or j.submitted_at <= args.until)]
    jobs = jobs if args.all_jobs else sweep_jobs(jobs, base.id)
    if args.since is not None or args.until is not None:
        window = " to ".join(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t is not None else "…"
                             for t in (args.since, args.until))
        print(f"Jobs submitted {window} (UTC).\n")
    print(f"Profile {args.profile}, base model `{base.id}`; {os.cpu_count()} CPUs, load average now "
          f"{os.getloadavg()[0]:.1f}.\n")
    print("\n".join(summary(jobs, above_threshold(base.id, args.drop))))


if __name__ == "__main__":
    main()
