"""One recipe trained in two precisions (`engine.config.PRECISIONS`), e.g. the quick profile in fp32 and quick-bf16
in bf16 autocast: their base models (test accuracy, training time), their sweeps (worker minutes per method, from the
job table, over the variants both ran) and every variant both measured with the same method, split and knobs, paired:
accuracy difference and bits ratio, over all of them and over those within `--drop` of the reference base model
(the ones a user would pick). Reads the cache and the results store only: train and sweep both profiles first.
Run: python bench/bench_precision.py [--profiles quick quick-bf16] [--drop 0.02] [--data PATH]"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402

from bench.common import DEFAULT_DATA, profile_data  # noqa: E402
from engine.paths import cache_dir  # noqa: E402
from engine.profiles import PROFILES  # noqa: E402
from engine.queue import JobQueue  # noqa: E402
from engine.store import ResultsStore  # noqa: E402
from engine.train import base_checkpoint_path  # noqa: E402
from engine.training import load_checkpoint  # noqa: E402


def paired(rows: pd.DataFrame, reference: str, other: str) -> pd.DataFrame:
    """The variants of base `other` that base `reference` measured with the same method, split and knobs: one row
    each with both accuracies and bits."""
    cols = ["id", "method", "split", "key", "accuracy", "bits_actual"]
    keyed = rows[["base_id", *(c for c in cols if c != "key"), "knobs"]].copy()
    keyed["key"] = [json.dumps(k, sort_keys=True) for k in keyed["knobs"]]
    ref, oth = keyed[keyed["base_id"] == reference][cols], keyed[keyed["base_id"] == other][cols]
    return ref.merge(oth, on=["method", "split", "key"], suffixes=("_ref", "_other"))


def comparison(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per method: paired variants, the accuracy difference (other - reference, points: median, min, max) and the
    median ratio of bits per image."""
    diff = 100 * (pairs["accuracy_other"] - pairs["accuracy_ref"])
    ratio = pairs["bits_actual_other"] / pairs["bits_actual_ref"]
    frame = pairs.assign(diff=diff, ratio=ratio)
    return frame.groupby("method").agg(variants=("diff", "size"), median_points=("diff", "median"),
                                       min_points=("diff", "min"), max_points=("diff", "max"),
                                       median_bits_ratio=("ratio", "median")).reset_index()


def worker_minutes(base_id: str, ids: set[str]) -> dict[str, float]:
    """Worker minutes of the finished jobs of a base model's variants `ids`, per method."""
    out: dict[str, float] = {}
    for job in JobQueue().jobs(base_id=base_id, reap=False):
        if job.id in ids and job.status == "done" and job.started_at and job.finished_at:
            out[job.spec.method] = out.get(job.spec.method, 0.0) + (job.finished_at - job.started_at) / 60
    return out


def minutes_text(methods: list[str], reference: dict[str, float], other: dict[str, float]) -> str:
    """Each method's worker minutes as "method reference / other", – for a side with none."""
    def shown(side: dict[str, float], method: str) -> str:
        return f"{side[method]:.1f}" if method in side else "–"

    return ", ".join(f"{m} {shown(reference, m)} / {shown(other, m)}" for m in methods)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", nargs=2, default=["quick", "quick-bf16"], choices=list(PROFILES),
                        metavar="PROFILE", help="the reference profile and the other one")
    parser.add_argument("--drop", type=float, default=0.02, help="accuracy below the reference base model's that "
                                                                  "a variant a user would pick may lose")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    args = parser.parse_args(argv)
    bases = []
    for name in args.profiles:
        profile, _, base = profile_data(name, args.data)
        ckpt = load_checkpoint(base_checkpoint_path(base, cache_dir()))
        if ckpt is None:  # not trained here (quick-bf16 is for CPUs with native bf16): nothing to compare
            print(f"Not measured: no base model {base.id} of profile {name} in the cache; train it with "
                  f"`python -m engine train-base --profile {name}` and sweep it.")
            return 0
        bases.append((profile, base, ckpt["metrics"]))
    print("| profile | base model | precision | test accuracy | validation | training min |")
    print("|---|---|---|---:|---:|---:|")
    for profile, base, m in bases:
        print(f"| {profile.name} | `{base.id}` | {base.precision} | {100 * m['test_accuracy']:.2f} % | "
              f"{100 * m['val_accuracy']:.2f} % | {m['train_seconds'] / 60:.1f} |")
    (ref_profile, ref, ref_metrics), (other_profile, other, _) = bases
    table = ResultsStore().table()
    pairs = paired(table[table["base_id"].isin([ref.id, other.id])], ref.id, other.id)
    if pairs.empty:
        print(f"\nNo variant measured on both base models: run `python -m engine sweep --profile "
              f"{ref_profile.name}` and `... --profile {other_profile.name}`.")
        return 0
    print(f"\n{len(pairs)} variants measured on both base models, {other_profile.name} against "
          f"{ref_profile.name} (accuracy in points, test split):\n")
    print(comparison(pairs).to_markdown(index=False, floatfmt=".2f"))
    need = ref_metrics["test_accuracy"] - args.drop
    usable = pairs[pairs["accuracy_ref"] >= need]
    print(f"\nOf them, the {len(usable)} within {100 * args.drop:g} points of the {ref_profile.name} base model "
          f"({100 * need:.2f} % or more there):\n")
    print(comparison(usable).to_markdown(index=False, floatfmt=".2f") if len(usable) else "none")
    minutes = [worker_minutes(ref.id, set(pairs["id_ref"])), worker_minutes(other.id, set(pairs["id_other"]))]
    print(f"\nWorker minutes of these variants' jobs per method ({ref_profile.name} / {other_profile.name}; – where "
          "the job table holds no finished job of them: measured outside the queue, or its history cleared): "
          + minutes_text(sorted(set(pairs["method"])), *minutes) + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
