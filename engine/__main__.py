"""Command line: `python -m engine {data,profile,train-base,run,results,sweep,jobs,worker,best} ...`. Every long
step shows progress; a user mistake prints one line and exits with status 2."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from engine.errors import UserError
from engine.paths import cache_dir
from engine.profiles import PROFILES

log = logging.getLogger("engine")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    """"16x6,24x4,32x3" (size x epochs) or "16,16,24,32" (one size per epoch) -> one size per epoch."""
    out: list[int] = []
    for part in text.split(","):
        size, cross, times = part.strip().partition("x")
        try:
            stage = (int(size), int(times) if cross else 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not sizes: {text!r}; e.g. 16x6,24x4,32x3 (size x epochs)") from None
        if min(stage) < 1:
            raise argparse.ArgumentTypeError(f"sizes and epochs must be positive: {part.strip()!r} in {text!r}")
        out += [stage[0]] * stage[1]
    return tuple(out)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset: CIFAR-10 root, ImageFolder dir with train/ and test/, or a .tar/.tar.gz "
                                  "of one (default: $COINFER_DATA, then cache/data/, then torchvision's download)")
    p.add_argument("--profile", default="quick", help="budget: smoke, quick (CPU default), quick-bf16 (quick in "
                                                       "bf16, for a CPU with AVX-512 BF16 or AMX) or paper (GPU)")
    p.add_argument("--width", type=_positive_float, help="width multiplier (default: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="seed of training, splits and subsets (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="locate, decode and cache the dataset; print a summary")
    _common(p)
    p = sub.add_parser("profile", help="FLOPs, memory and feature size at each split (no training needed)")
    _common(p)
    p.add_argument("--all-splits", action="store_true", help="include every BasicBlock boundary")
    p = sub.add_parser("train-base", help="train (or load from the cache) the base model")
    _common(p)
    p.add_argument("--sizes", type=_sizes, help="progressive resizing: the input size of each epoch as SIZExEPOCHS "
                                               "parts, e.g. 16x6,24x4,32x3 (13 epochs; replaces the profile's count)")
    p = sub.add_parser("run", help="build and measure a method's variants; rows go to the results store")
    _common(p)
    p.add_argument("method", help="method name, e.g. original")
    p.add_argument("--split", action="append", help="split point (repeatable; default: the paper's split points)")
    p = sub.add_parser("results", help="print the results table", description=f"The results table. {NARROWING}")
    _common(p)
    p.set_defaults(profile=None, seed=None)
    p.add_argument("--method", help="only this method")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    fmt.add_argument("--json", action="store_true", help="JSON records on stdout")
    _add_queue_commands(sub)
    _add_noisy_command(sub)
    _add_coinference_commands(sub)
    return parser


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_queue_commands(sub: argparse._SubParsersAction) -> None:
    from engine.queue import CANCEL_GRACE_S, HEARTBEAT_S, LEASE_S, STATUSES

    p = sub.add_parser("sweep", help="queue a profile's grid of variants (cheapest first) and run it with local "
                                     "worker processes or on a Dask cluster")
    _common(p)
    p.add_argument("--method", action="append", help="only this method (repeatable; default: every registered one)")
    p.add_argument("--split", action="append", help="only this split point (repeatable; default: the grid's)")
    p.add_argument("--workers", type=_non_negative_int, default=1,
                   help="local worker processes (default 1; 0: only queue the jobs for `python -m engine worker`)")
    p.add_argument("--scheduler", help="run the jobs on the Dask cluster at this address, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--force", action="store_true", help="measure again the variants already in the results store")

    p = sub.add_parser("jobs", help="the job queue: list, show, cancel, retry, submit, clean, pause, resume")
    actions = p.add_subparsers(dest="action")
    q = actions.add_parser("list", help="jobs in claim order (the default action)")
    q.add_argument("--status", choices=STATUSES, action="append", help="only jobs in this state (repeatable)")
    p.set_defaults(action="list", status=None)
    q = actions.add_parser("show", help="everything about one job, its error and traceback included")
    q.add_argument("id", help="job id (or its first characters)")
    q = actions.add_parser("cancel", help="cancel queued or running jobs (a running one stops at its next progress "
                                          "report, or is killed after the grace period)")
    q.add_argument("id", nargs="*", help="job ids (or their first characters)")
    q.add_argument("--all", action="store_true", help="every queued or running job")
    q.add_argument("--grace", type=_positive_float, default=CANCEL_GRACE_S,
                   help=f"seconds a running job may take to stop before its worker is killed "
                        f"(default {CANCEL_GRACE_S:g})")
    q = actions.add_parser("retry", help="queue failed or cancelled jobs again")
    q.add_argument("id", nargs="*", help="job ids (or their first characters)")
    q.add_argument("--failed", action="store_true", help="every failed job")
    q = actions.add_parser("submit", help="add one variant to the queue (a worker or sweep runs it)")
    _common(q)
    q.add_argument("method", help="method name, e.g. original")
    q.add_argument("--split", required=True, action="append", help="split point (repeatable)")
    q.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="a knob of the method, e.g. bits=4 (repeatable; values are read as JSON when they can be)")
    actions.add_parser("clean", help="remove done and cancelled jobs from the table (results stay)")
    actions.add_parser("pause", help="hand out no more jobs (running ones go on, queued ones wait) until resume; "
                                     "nothing starts a worker on its own meanwhile")
    actions.add_parser("resume", help="hand out jobs again")

    p = sub.add_parser("worker", help="take jobs from the queue and run them until stopped (Ctrl-C)")
    p.add_argument("--processes", type=_non_negative_int, default=1, help="worker processes (default 1)")
    p.add_argument("--idle-exit", type=_positive_float, metavar="SECONDS",
                   help="exit after this long without a job, and not before one lease while jobs run elsewhere "
                        "(a dead worker's job is taken over) (default: keep waiting)")
    p.add_argument("--heartbeat", type=_positive_float, default=HEARTBEAT_S,
                   help=f"seconds between heartbeats (default {HEARTBEAT_S:g})")
    p.add_argument("--lease", type=_positive_float, default=LEASE_S,
                   help=f"seconds without a heartbeat after which a job returns to the queue (default {LEASE_S:g})")

    p = sub.add_parser("best", help="the best measured variant of each method for an edge environment "
                                    "(lowest latency among feasible variants meeting the accuracy threshold)",
                       description=f"The best measured variant of each method for an edge environment. {NARROWING}")
    _common(p)
    p.set_defaults(profile=None, seed=None)
    p.add_argument("--rate", required=True, help="link rate with a unit: 40kB/s, 1Mbit/s, 250kbps ...")
    p.add_argument("--device", default="pi3", help="device preset (default pi3)")
    p.add_argument("--server", default="rtx2080ti", help="server preset (default rtx2080ti)")
    p.add_argument("--threshold", type=float, help="minimum top-1 accuracy, a fraction such as 0.93 (default: none)")
    p.add_argument("--bits", choices=("actual", "ideal"), default="actual",
                   help="bits per image: the real bitstream (default) or the ideal figure")
    p.add_argument("--base", help="only rows of this base model id (see `python -m engine results`)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")


def _writable_cache() -> Path:
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / f".write-probe-{time.time_ns()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cache directory {cache} is not writable ({exc.strerror}): "
                        "set COINFER_CACHE to a writable directory") from None
    return cache


class _Bar:
    """A tqdm bar driven by (fraction, message) progress callbacks."""

    def __init__(self, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, desc=desc, unit="‰", file=sys.stderr, leave=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        self.bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        self.bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        self.bar.close()


def _load(args: argparse.Namespace):  # noqa: ANN202
    from engine.data import load_data, subset

    profile = PROFILES.get(args.profile)
    data = load_data(args.data, cache_dir=_writable_cache())
    if profile.train_limit or profile.test_limit:
        data = subset(data, profile.train_limit, profile.test_limit, seed=args.seed)
    base = profile.base_config(data.fingerprint, width=args.width, seed=args.seed)
    return profile, data, base


def cmd_data(args: argparse.Namespace) -> int:
    from engine.data import mean_png_bits

    start = time.perf_counter()
    _, data, _ = _load(args)
    seconds = time.perf_counter() - start
    print(f"dataset      {data.name} ({data.source})")
    print(f"fingerprint  {data.fingerprint}")
    print(f"train/test   {len(data.train_y)} / {len(data.test_y)} images, {data.channels}x"
          f"{data.image_size[0]}x{data.image_size[1]}, {data.num_classes} classes")
    print(f"classes      {' '.join(data.classes)}")
    print(f"PNG input    {mean_png_bits(data, _writable_cache()):.0f} bits per test image (mean)")
    print(f"loaded in    {seconds:.2f} s")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from engine.models import split_names
    from engine.profile import profile_model
    from engine.train import make_model

    _, data, base = _load(args)
    model = make_model(base, data)
    rows = profile_model(model, (data.channels, *data.image_size), data.num_classes,
                         split_names(coarse_only=not args.all_splits))
    table = pd.DataFrame(rows)[["split", "device_flops", "server_flops", "device_memory_bytes", "feature_shape",
                                "bits_fp32", "bits_8bit"]]
    table["device_MFLOPs"] = table.pop("device_flops") / 1e6
    table["server_MFLOPs"] = table.pop("server_flops") / 1e6
    table["device_memory_kB"] = table.pop("device_memory_bytes") / 1e3
    print(f"width {base.width}, input {data.channels}x{data.image_size[0]}x{data.image_size[1]}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


def _runs(values: tuple[float, ...]) -> str:
    """A per-epoch schedule as VALUExEPOCHS runs, the form `--sizes` takes: 16x6,24x4,32x3."""
    return ",".join(f"{v:g}x{len(list(run))}" for v, run in itertools.groupby(values))


def cmd_train_base(args: argparse.Namespace) -> int:
    from engine.provenance import describe_environments
    from engine.train import load_or_train_base

    profile, data, base = _load(args)
    if args.sizes:
        base = dataclasses.replace(base, epochs=len(args.sizes), sizes=args.sizes, scales=())
    bar = _Bar(f"base {base.id}")
    try:
        _, ckpt = load_or_train_base(base, data, _writable_cache(), bar)
    finally:
        bar.close()
    m = ckpt["metrics"]
    where = describe_environments([m["trained_on"]]) if "trained_on" in m else m["device"]
    schedule = ("sizes", base.sizes) if base.sizes else ("scales", base.scales) if base.scales else None
    sizes = f" ({schedule[0]} {_runs(schedule[1])})" if schedule else ""
    precision = f" in {base.precision}" if base.precision != "auto" else ""
    print(f"base model {base.id}: width {base.width}, {base.epochs} epochs{sizes}, test accuracy "
          f"{m['test_accuracy']:.4f}, validation {m['val_accuracy']:.4f}, trained{precision} in "
          f"{m['train_seconds']:.0f} s on {where}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from engine.methods import METHODS, RunContext
    from engine.models import SPLIT_POINTS, split_names
    from engine.store import ResultsStore

    method = METHODS.get(args.method)
    splits = args.split or split_names(coarse_only=True)
    for s in splits:
        SPLIT_POINTS.get(s)
    profile, data, base = _load(args)
    cache = _writable_cache()
    store = ResultsStore()
    bar = _Bar(args.method)
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


NARROWING = ("Every row in the store; with --profile or --data, the rows of that base model (--width and --seed pick "
             "it, as in the other commands); with --width or --seed alone, the rows of that width or seed.")


def _narrow(table: pd.DataFrame, args: argparse.Namespace) -> tuple[pd.DataFrame, str, str]:
    """The rows NARROWING says, the words that name them ("" for all) and the options that name the profile."""
    if args.profile is not None or args.data is not None:
        args.profile, args.seed = args.profile or "quick", args.seed or 0
        base_id = _load(args)[2].id
        return table[table["base_id"] == base_id], f" of base model {base_id}", f" --profile {args.profile}"
    narrowed = ""
    for column in ("width", "seed"):
        if getattr(args, column) is not None:
            table, narrowed = table[table[column] == getattr(args, column)], " with these options"
    return table, narrowed, ""


def cmd_results(args: argparse.Namespace) -> int:
    from engine.store import ResultsStore, frame_to_csv, frame_to_json

    table, narrowed, profile = _narrow(ResultsStore().table(method=args.method), args)
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


def _data_path(args: argparse.Namespace) -> str | None:
    return args.data or os.environ.get("COINFER_DATA") or None


def _fmt_job_line(job) -> str:  # noqa: ANN001 - engine.queue.Job
    r = job.result or {}
    if job.status == "failed":
        return f"failed {job.describe()}: {job.error}"
    if job.status != "done":
        return f"{job.status} {job.describe()}"
    parts = [f"acc {r['accuracy']:.2%}" if "accuracy" in r else "", f"{r['bits_actual']:.0f} bits"
             if "bits_actual" in r else "", f"{r['device_flops'] / 1e6:.2f} MFLOPs" if "device_flops" in r else ""]
    return f"done   {job.describe()}  " + "  ".join(p for p in parts if p)


def cmd_sweep(args: argparse.Namespace) -> int:
    from engine import sweep
    from engine.queue import JobQueue
    from engine.store import ResultsStore

    if args.scheduler is not None and "://" not in args.scheduler and ":" not in args.scheduler:
        raise UserError(f"--scheduler wants a Dask scheduler address such as tcp://10.0.0.5:8786, got "
                        f"{args.scheduler!r}")
    if not args.verbose:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    profile, data, base = _load(args)
    planned = sweep.plan(profile.name, base, _data_path(args), methods=args.method, splits=args.split)
    queue, store = JobQueue(), ResultsStore()
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.spec.method] = counts.get(p.spec.method, 0) + 1
    print(f"sweep {profile.name}: base model {base.id} (width {base.width:g}), {len(planned)} variants: "
          + ", ".join(f"{m} {n}" for m, n in counts.items()), flush=True)
    bar = _Bar(f"sweep {profile.name}")
    seen: set[str] = set()

    def on_update(jobs: list) -> None:
        total = max(len(jobs), 1)
        done = sum(1.0 if j.finished else j.progress if j.status == "running" else 0.0 for j in jobs)
        running = [j for j in jobs if j.status in ("running", "cancelling")]
        finished = sum(j.finished for j in jobs)
        note = f"{finished}/{len(jobs)} finished"
        if running:
            note += f"; {running[0].method} {running[0].split}: {running[0].message}"
        bar(done / total, note[:80])
        for j in jobs:
            if j.finished and j.id not in seen:
                seen.add(j.id)
                bar.bar.write(_fmt_job_line(j))

    try:
        report = sweep.run(planned, queue=queue, store=store, workers=args.workers, scheduler=args.scheduler,
                           force=args.force, on_update=on_update)
    finally:
        bar.close()
    if report.measured:
        print(f"{len(report.measured)} of {len(planned)} variants were already in the results store "
              "(--force measures them again)")
    if args.workers == 0 and args.scheduler is None and report.jobs:
        print(f"{len(report.jobs)} jobs queued in {queue.path}: start workers with `python -m engine worker`")
        return 0
    first = f", first row after {report.first_row_s:.1f} s" if report.first_row_s is not None else ""
    print(f"sweep {profile.name} finished in {report.wall_s:.1f} s{first}")
    table = pd.DataFrame.from_dict(report.per_method(), orient="index")
    print(table.rename_axis("method").to_string())
    for job in report.failed:
        print(f"failed: {job.describe()}: {job.error}  (`python -m engine jobs show {job.id}`)")
    return 1 if report.failed else 0


def _age(t: float | None) -> str:
    if t is None:
        return ""
    s = max(time.time() - t, 0.0)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.0f}h"


def _jobs_table(jobs: list) -> pd.DataFrame:
    return pd.DataFrame([{
        "id": j.id, "status": j.status, "progress": f"{j.progress:.0%}", "method": j.method, "split": j.split,
        "profile": j.spec.profile, "width": f"{j.spec.width:g}" if j.kind == "variant" else "",
        "attempts": j.attempts, "pid": j.worker_pid or "", "updated": _age(j.updated_at),
        "message": (j.error if j.status == "failed" else j.message or "")[:70],
    } for j in jobs])


def _resolve_ids(queue, ids: list[str]) -> list:  # noqa: ANN001 - engine.queue.JobQueue
    return [queue.resolve(i) for i in ids]


def cmd_jobs(args: argparse.Namespace) -> int:
    from engine import sweep
    from engine.queue import ACTIVE, JobQueue

    queue = JobQueue()
    if args.action == "list":
        jobs = queue.jobs(status=args.status)
        if not jobs:
            print("no jobs" + (f" with status {', '.join(args.status)}" if args.status else "")
                  + ": queue some with `python -m engine sweep` or `python -m engine jobs submit`")
            return 0
        print(_jobs_table(jobs).to_string(index=False))
        counts = queue.counts()
        print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
        workers = queue.live_workers()
        print(f"{len(workers)} live worker(s)" + (": " + ", ".join(f"pid {w['pid']}" for w in workers)
                                                   if workers else "; start one with `python -m engine worker`"))
        if (reason := queue.paused()) is not None:
            print(f"the queue is paused ({reason})")
        return 0
    if args.action == "show":
        job = queue.resolve(args.id)
        print(f"job        {job.id} ({job.kind})")
        print(f"what       {job.describe()}")
        print(f"status     {job.status} ({job.progress:.0%}: {job.message})")
        print(f"attempts   {job.attempts} of {job.max_attempts}; worker {job.worker or '-'}")
        for name in ("submitted_at", "started_at", "finished_at"):
            t = getattr(job, name)
            if t:
                print(f"{name.split('_')[0]:<10} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))}")
        if job.result:
            print(f"result     {json.dumps(job.result)}")
        print(f"spec       {job.spec.to_json()}")
        if job.error:
            print(f"error      {job.error}")
        if job.traceback:
            print(job.traceback.rstrip())
        return 0
    if args.action == "cancel":
        if not args.id and not args.all:
            raise UserError("name the job(s) to cancel, or pass --all")
        jobs = queue.jobs(status=ACTIVE) if args.all else _resolve_ids(queue, args.id)
        for job in jobs:
            print(f"{job.id}: {queue.cancel(job.id, args.grace)}")
        return 0
    if args.action == "retry":
        if not args.id and not args.failed:
            raise UserError("name the job(s) to retry, or pass --failed")
        jobs = queue.jobs(status="failed") if args.failed else _resolve_ids(queue, args.id)
        for job in jobs:
            print(f"{job.id}: {queue.retry(job.id)}")
        return 0
    if args.action == "submit":
        knobs = {}
        for item in args.knob:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise UserError(f"a knob is NAME=VALUE, got {item!r}")
            try:
                knobs[name.strip()] = json.loads(value)
            except ValueError:
                knobs[name.strip()] = value
        profile, _, base = _load(args)
        planned = [sweep.one_variant(args.method, s, profile.name, base, _data_path(args), **knobs)
                   for s in args.split]
        ids = queue.submit([p.spec for p in planned], [p.priority for p in planned])
        for job in queue.jobs(ids):
            print(f"{job.id}: {job.status} ({job.describe()})")
        return 0
    if args.action == "clean":
        print(f"removed {queue.delete_finished()} done or cancelled jobs")
        return 0
    if args.action == "pause":
        queue.pause("paused by hand; `python -m engine jobs resume` goes on")
        print("paused: running jobs go on, queued ones wait for `python -m engine jobs resume`")
        return 0
    if args.action == "resume":
        print("resumed: workers take queued jobs again" if queue.resume() else "the queue was not paused")
        return 0
    raise UserError(f"unknown jobs action {args.action!r}")


def cmd_worker(args: argparse.Namespace) -> int:
    from engine.queue import JobQueue, WorkerOptions, WorkerPool

    _writable_cache()
    if args.processes < 1:
        raise UserError("--processes must be at least 1")
    if args.lease <= 2 * args.heartbeat:
        raise UserError(f"--lease ({args.lease:g} s) must be more than twice --heartbeat ({args.heartbeat:g} s)")
    queue = JobQueue()
    options = WorkerOptions(heartbeat_s=args.heartbeat, lease_s=args.lease, idle_exit_s=args.idle_exit)
    pool = WorkerPool(queue, args.processes, options)
    print(f"worker: {args.processes} process(es) on {queue.path}"
          + (f", exiting after {args.idle_exit:g} s idle" if args.idle_exit else "; Ctrl-C to stop"), flush=True)
    if (reason := queue.paused()) is not None:
        print(f"the queue is paused ({reason}): this worker waits until `python -m engine jobs resume`", flush=True)
    pool.run(keep_alive=args.idle_exit is None)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from engine.latency import resolve_device, to_rate_bps
    from engine.pareto import best_per_method
    from engine.store import ResultsStore
    from engine.units import format_bits, format_flops, format_rate, format_seconds

    rate = to_rate_bps(args.rate)
    device, server = resolve_device(args.device), resolve_device(args.server)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold is a fraction in [0, 1], got {args.threshold:g}; e.g. 0.93 for 93 %")
    table, narrowed, profile = _narrow(ResultsStore().table(), args)
    if args.base:
        table = table[table["base_id"] == args.base]
    bits_column = f"bits_{args.bits}"
    best = best_per_method(table, device, server, rate, args.threshold, bits_column)
    where = (f"{format_rate(rate)} ({format_rate(rate, 'bit')}), device {device.describe()}, server "
             f"{server.describe()}" + (f", accuracy >= {args.threshold:.1%}" if args.threshold is not None else ""))
    cols = ["method", "split", "id", "accuracy", bits_column, "device_flops", "latency", "t_device", "t_transmit",
            "t_server"]
    if args.json:
        records = json.loads(best[cols].to_json(orient="records")) if not best.empty else []
        json.dump({"rate_bps": rate, "device": device.name, "server": server.name, "threshold": args.threshold,
                   "bits_column": bits_column, "best": records[0] if records else None, "per_method": records},
                  sys.stdout, indent=1)
        print()
        return 0
    if table.empty:
        print(f"no results{narrowed} yet: run `python -m engine sweep{profile}` first")
        return 0
    if best.empty:
        print(f"no measured variant fits at {where}: lower --threshold or measure more variants")
        return 0
    bases = table["base_id"].nunique() if "base_id" in table else 1
    if bases > 1:
        print(f"note: the table mixes rows of {bases} base models; narrow it with --profile (or --base ID)")
    print(f"best per method at {where}:")
    shown = pd.DataFrame({
        "method": best["method"], "split": best["split"], "accuracy": best["accuracy"].map("{:.2%}".format),
        "bits": best[bits_column].map(format_bits), "device": best["device_flops"].map(format_flops),
        "latency": best["latency"].map(format_seconds), "t_device": best["t_device"].map(format_seconds),
        "t_transmit": best["t_transmit"].map(format_seconds), "t_server": best["t_server"].map(format_seconds),
        "id": best["id"]})
    print(shown.to_string(index=False))
    top = best.iloc[0]
    print(f"best: {top['method']} at {top['split']} ({top['id']}), latency {format_seconds(top['latency'])}")
    return 0


def _add_coinference_commands(sub: argparse._SubParsersAction) -> None:
    from engine.protocol import DEFAULT_MAX_PAYLOAD

    p = sub.add_parser("export", help="write the deployable bundle of a variant in the results store")
    p.add_argument("--id", required=True, help="variant id (or its first characters), see `python -m engine results`")
    p.add_argument("--out", required=True, type=Path, help="bundle directory, or a .zip archive")
    p.add_argument("--data", help="dataset the variant was measured on (default: $COINFER_DATA, then cache/data/)")
    p = sub.add_parser("serve", help="the edge server of co-inference: load a bundle's server part, answer over TCP")
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory or .zip from `python -m engine export`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    p.add_argument("--max-message", type=int, default=DEFAULT_MAX_PAYLOAD, help="largest accepted message, bytes")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p = sub.add_parser("device", help="the device of co-inference: run a bundle's device part on test images and "
                                      "send the bitstream over a rate-limited link")
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory or .zip from `python -m engine export`")
    p.add_argument("--server", default="127.0.0.1:8765", help="HOST:PORT of `python -m engine serve`")
    p.add_argument("--rate", default="40kB/s", help="link rate enforced on the sender, e.g. 40kB/s, 1Mbit/s")
    p.add_argument("--delay", type=float, default=0.0, help="propagation delay per message, milliseconds")
    p.add_argument("--images", type=int, default=50, help="number of test images (default 50)")
    p.add_argument("--data", help="dataset (default: $COINFER_DATA, then cache/data/)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="per-image timings and the summary as JSON on stdout")


def cmd_export(args: argparse.Namespace) -> int:
    from engine.data import load_data, subset
    from engine.export import row_config, write_bundle
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
    data = load_data(_data_path(args), cache_dir=_writable_cache())
    if profile.train_limit or profile.test_limit:
        data = subset(data, profile.train_limit, profile.test_limit, seed=cfg.base.seed)
    if data.fingerprint != cfg.base.dataset:
        raise UserError(f"variant {cfg.id} was measured on data {cfg.base.dataset}, this is {data.fingerprint}: "
                        "pass the same --data")
    out = write_bundle(cfg, RunContext(data, profile, _writable_cache()), args.out, metrics=row)
    print(f"bundle of {cfg.method} @ {cfg.split} ({cfg.id}) written to {out}")
    return 0


def _threads(args: argparse.Namespace) -> None:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.coinference import CoinferenceServer
    from engine.export import load_bundle

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


def cmd_device(args: argparse.Namespace) -> int:
    from engine.coinference import DeviceClient, parse_address
    from engine.data import load_data, subset
    from engine.export import load_bundle
    from engine.latency import to_rate_bps

    _threads(args)
    bundle = load_bundle(args.bundle)
    host, port = parse_address(args.server)
    rate = to_rate_bps(args.rate)
    if args.images < 1:
        raise UserError(f"--images must be >= 1, got {args.images}")
    data = load_data(_data_path(args), cache_dir=_writable_cache())
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


def _add_noisy_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("noisy", help="the paper's Fig. 5: JSCC against separate source and channel coding over AWGN "
                                     "and BSC channels at conv4_x; rows go to the results store")
    _common(p)
    p.add_argument("--channel", choices=("awgn", "bsc", "both"), default="both", help="which channel (default both)")
    p.add_argument("--force", action="store_true", help="measure again the variants already in the results store")
    p.add_argument("--drop", type=float, default=2.0, help="accuracy drop allowed below the base model, in points "
                                                           "(default 2)")
    p.add_argument("--bandwidth", type=_positive_float, default=1e6,
                   help="AWGN channel uses per second W, Hz (default 1e6: the paper's 1 MHz)")


def cmd_noisy(args: argparse.Namespace) -> int:
    from engine.fig5 import fig5_plan, fig5_report, run_fig5
    from engine.methods import RunContext
    from engine.store import ResultsStore

    if not 0.0 <= args.drop < 100.0:
        raise UserError(f"--drop is in points, from 0 to 100, got {args.drop:g}")
    profile, data, base = _load(args)
    channels = ("awgn", "bsc") if args.channel == "both" else (args.channel,)
    store = ResultsStore()
    bar = _Bar(f"noisy {profile.name}")
    try:
        rows = run_fig5(RunContext(data, profile, _writable_cache(), progress=bar), base, channels,
                        skip=() if args.force else store, on_row=store.put)
        bar(1.0, "done")
    finally:
        bar.close()
    table = store.table()
    planned = {cfg.id for cfg in fig5_plan(base, profile.budget_name, channels)}
    table = table[table["id"].isin(planned)] if not table.empty else table
    print(f"Fig. 5 at conv4_x, base model {base.id} (width {base.width:g}), {profile.name} profile: {len(rows)} "
          "variant(s) measured now, the rest from the results store (this profile's variants only, as the dashboard's "
          "Noisy channels page shows them by default)")
    print(fig5_report(table, channels, args.drop / 100, args.bandwidth))
    return 0


COMMANDS = {"data": cmd_data, "profile": cmd_profile, "train-base": cmd_train_base, "run": cmd_run,
            "results": cmd_results, "sweep": cmd_sweep, "jobs": cmd_jobs, "worker": cmd_worker, "best": cmd_best,
            "export": cmd_export, "serve": cmd_serve, "device": cmd_device, "noisy": cmd_noisy}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        from engine.queue import interrupt_on_terminate

        interrupt_on_terminate()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
        return status
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`results | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when stdout is flushed
        return 141


if __name__ == "__main__":
    sys.exit(main())
