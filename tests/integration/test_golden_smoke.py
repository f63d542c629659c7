"""The smoke sweep and `noisy --profile smoke` give the very rows recorded in `golden/smoke-<kernels>.json`: the same
variant ids and, bit for bit, the same figures. A restructuring of the engine must not move a number; a change that
is meant to (a new budget, a fixed bug) regenerates the file with `COINFER_WRITE_GOLDEN=1 pytest
tests/integration/test_golden_smoke.py` and says why in its commit.

The figures are those of one kind of CPU: another vendor or instruction set runs other float kernels (the same code
gives other last bits, and a smoke accuracy of 240 images moves by an image), so each kind keeps its own file,
named by `kernels()`. The variant ids do not depend on the CPU and are checked against any recorded file; on a CPU
kind with no file yet the figures are not compared, and the test says so and how to record them."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.data import ImageData
from engine.fig5 import run_fig5
from engine.methods import RunContext
from engine.profiles import PROFILES
from engine.queue import execute, load_job_data
from engine.sweep import plan

GOLDEN_DIR = Path(__file__).parent / "golden"


def kernels() -> str:
    """The kind of CPU the float kernels are chosen for: vendor, torch's CPU capability, and AMX where present."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vendor = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("vendor_id")),
                  platform.machine() or "cpu")
    amx = "-amx" if " amx_tile" in info else ""
    return f"{vendor}-{torch.backends.cpu.get_cpu_capability()}{amx}".lower()


# Columns that depend on when, where or how fast a row was measured, not on what was measured.
UNSTABLE = ("measured_at", "code_version", "torch_version", "trained_on", "dataset")
UNSTABLE_SUFFIXES = ("_seconds", "_s")


def stable(row: dict[str, Any]) -> dict[str, Any]:
    """The columns of a row that a restructuring must leave unchanged, as JSON would store them."""
    kept = {k: v for k, v in row.items() if k not in UNSTABLE and not k.endswith(UNSTABLE_SUFFIXES)}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread: the recorded figures were trained with one, and another count sums in another order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def measure(cache: Path, data_path: str, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Every row of the smoke sweep (through the job code path) and of Fig. 5 on the smoke profile, by id."""
    profile = PROFILES.get("smoke")
    rows: dict[str, dict[str, Any]] = {}
    planned = None
    for p in plan("smoke", profile.base_config(fingerprint), data_path):
        planned = p
        row = execute(p.spec, cache=cache)
        rows[row["id"]] = stable(row)
    assert planned is not None
    data = load_job_data(planned.spec, cache)
    ctx = RunContext(data, profile, cache)
    for row in run_fig5(ctx, profile.base_config(data.fingerprint), skip=rows):
        rows[row["id"]] = stable(row)
    return rows


def differences(expected: dict[str, Any], got: dict[str, Any], where: str = "") -> list[str]:
    """Each place where `got` differs from `expected` (floats bit for bit, NaN equal to NaN)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        out = [f"{where}.{k}: missing" for k in expected if k not in got]
        out += [f"{where}.{k}: not expected" for k in got if k not in expected]
        for k in expected.keys() & got.keys():
            out += differences(expected[k], got[k], f"{where}.{k}")
        return out
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        pairs = enumerate(zip(expected, got, strict=True))
        return [d for i, (e, g) in pairs for d in differences(e, g, f"{where}[{i}]")]
    if isinstance(expected, float) and isinstance(got, float) and math.isnan(expected) and math.isnan(got):
        return []
    return [] if expected == got and type(expected) is type(got) else [f"{where}: {expected!r} -> {got!r}"]


@pytest.mark.slow
def test_smoke_sweep_and_fig5_rows_are_unchanged(fresh_cache: Path, small_data: ImageData, one_thread: None) -> None:
    rows = measure(fresh_cache, os.environ["COINFER_DATA"], small_data.fingerprint)
    golden = GOLDEN_DIR / f"smoke-{kernels()}.json"
    if os.environ.get("COINFER_WRITE_GOLDEN"):
        GOLDEN_DIR.mkdir(exist_ok=True)
        golden.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    recorded = {path.name: json.loads(path.read_text()) for path in sorted(GOLDEN_DIR.glob("smoke-*.json"))}
    assert recorded, f"no golden rows in {GOLDEN_DIR}"
    for name, rows_of in recorded.items():
        assert sorted(rows) == sorted(rows_of), f"variant ids changed (against {name})"
    if golden.name not in recorded:
        pytest.skip(f"no golden figures for this CPU kind ({kernels()}); the ids match. Record them with "
                    "COINFER_WRITE_GOLDEN=1 on a commit whose figures are known good")
    expected = recorded[golden.name]
    diff = differences(expected, rows)
    assert not diff, f"{len(diff)} figure(s) changed:\n" + "\n".join(diff[:40])
