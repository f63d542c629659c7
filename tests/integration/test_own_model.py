"""A network of one's own, from a file (a residual addition and a concatenation, 28x28 one-channel images), through
the command line as a user drives it: `profile`, a smoke sweep of every method at one of its nodes, `noisy`, `export`,
`serve` and `device`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, served
from PIL import Image

MODEL = "tests/user_model.py:TinyNet"
SPLIT = "mix"  # a 7x7 map: BottleNet++'s stride-2 encoder covers it by padding


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder of 28x28 grey images, three classes told apart by brightness."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 15)):
        for c in range(3):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((28, 28)) * 60 + c * 60).astype(np.uint8), "L").save(folder / f"{i}.png")
    return root


def engine(args: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_a_users_model_goes_through_every_command(tiny_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "COINFER_CACHE": str(cache), "COINFER_DATA": str(tiny_folder),
           "PYTHONPATH": str(PROJECT_ROOT)}
    common = ["--profile", "smoke", "--model", MODEL]
    listed = engine(["profile", *common, "--all-splits", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert {"stem", "cat", SPLIT} <= {r["split"] for r in json.loads(listed.stdout)}
    refused = engine(["profile", *common, "--splits", "left"], env)
    assert refused.returncode == 2 and "2 tensors cross there (relu, left.2)" in refused.stderr
    swept = engine(["sweep", *common, "--splits", SPLIT, "--workers", "1", "--no-cross"], env)
    assert swept.returncode == 0, swept.stderr[-2000:]
    noisy = engine(["noisy", *common, "--splits", SPLIT, "--channel", "awgn"], env)
    assert noisy.returncode == 0 and f"Fig. 5 at {SPLIT}" in noisy.stdout, noisy.stderr[-2000:]
    rows = json.loads(engine(["results", "--json"], env).stdout)
    assert {"original", "three_step", "two_step_pruning", "bottlenet_pp"} <= {r["method"] for r in rows}
    assert all(r["model"].endswith(MODEL) for r in rows)
    chosen = next(r for r in rows if r["method"] == "three_step" and r["split"] == SPLIT
                  and r["knobs"].get("encoder") == "none" and r["knobs"].get("snapshot") == 0)
    bundle = tmp_path / "bundle.zip"
    exported = engine(["export", "--id", chosen["id"], "--out", str(bundle)], env)
    assert exported.returncode == 0, exported.stderr[-2000:]
    with served(bundle, cache, f"three_step @ {SPLIT}") as (address, serve_env):
        device = subprocess.run([sys.executable, "-m", "engine", "device", "--bundle", str(bundle), "--server",
                                 address, "--images", "6", "--threads", "1"], cwd=PROJECT_ROOT,
                                env={**serve_env, "COINFER_DATA": str(tiny_folder)}, capture_output=True, text=True,
                                timeout=300)
    assert device.returncode == 0, device.stderr[-2000:]
    assert "6 images over" in device.stdout and "accuracy" in device.stdout
