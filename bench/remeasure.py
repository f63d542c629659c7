"""Measure stored rows again with this release's code, their trained parts (base model, pruning run, encoder) loaded
from the cache, so that rows measured by an earlier rule read as new ones do. Each row is rebuilt from its job's spec
(rows without a job, imported ones, are listed and left alone) and replaces the stored one; the cost of first
measuring it (`eval_seconds`, `prune_seconds`) is kept, since a sweep's and a study's charged minutes are what
training and measuring cost, and the seconds of measuring again go to `remeasure_seconds`.

Run: python bench/remeasure.py [--payload-rule] [--ids ID ...] [--base BASE_ID] [--data PATH] [--threads N]
[--dry-run]"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402

from bench.common import DEFAULT_DATA  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.queue import JobQueue  # noqa: E402
from engine.queue.spec import execute  # noqa: E402
from engine.store import ResultsStore  # noqa: E402

KEPT = ("eval_seconds", "prune_seconds")  # what first measuring the row cost


def counted_whole_bytes(row: Mapping[str, Any]) -> bool:
    """True for a row whose bits an earlier payload rule counted in whole bytes where the wire now carries fewer:
    its fixed-length form (`bits_raw`: a 16-codeword codebook's 4 bits, a device-only label's ceil(log2 classes))
    shorter than its measured bits.

    Args:
        row: a results row.
    Returns:
        Whether measuring it again may lower its bits by more than the byte padding of a long payload.
    """
    return _number(row.get("bits_raw")) < _number(row.get("bits_actual")) - 1e-9


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def chosen(rows: Iterable[Mapping[str, Any]], ids: Sequence[str], payload_rule: bool,
           base: str | None) -> list[Mapping[str, Any]]:
    """The rows to measure again: those named, and with `payload_rule` those `counted_whole_bytes`, of `base`."""
    return [r for r in rows if (r["id"] in ids or (payload_rule and counted_whole_bytes(r)))
            and (base is None or r.get("base_id") == base)]


def setup_args() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ids", nargs="*", default=[], help="row ids to measure again")
    p.add_argument("--payload-rule", action="store_true",
                   help="the rows an earlier payload rule counted in whole bytes (see counted_whole_bytes)")
    p.add_argument("--base", default=None, help="only rows of this base model id")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--dry-run", action="store_true", help="list the rows; measure nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = setup_args().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    store, queue = ResultsStore(), JobQueue()
    rows = chosen(store.rows(), args.ids, args.payload_rule, args.base)
    jobs = {j.id: j for j in queue.jobs([r["id"] for r in rows], reap=False)}
    print(f"{len(rows)} row(s) to measure again, {sum(r['id'] in jobs for r in rows)} with a job spec")
    for r in rows:
        job = jobs.get(r["id"])
        head = f"{r['id']} {r['method']} {r['split']}: {_number(r.get('bits_actual')):.1f} bits"
        if job is None or args.dry_run:
            print(head + ("" if job else " (no job spec: left alone)"))
            continue
        spec = job.spec if job.spec.data else dataclasses.replace(job.spec, data=args.data)
        start = time.perf_counter()
        new = execute(spec)
        assert new is not None and new["id"] == r["id"], "a spec rebuilds its own variant"
        new = {**new, **{k: r[k] for k in KEPT if k in r}, "remeasure_seconds": time.perf_counter() - start}
        store.put(new)
        print(f"{head} -> {new['bits_actual']:.1f} bits; validation {_number(r.get('deployed_val_accuracy')):.4f} "
              f"-> {_number(new.get('deployed_val_accuracy')):.4f}, test {_number(r.get('accuracy')):.4f} -> "
              f"{new['accuracy']:.4f} ({new['remeasure_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
