"""Shared fixtures: the CIFAR-10 JPEG archive from ../shared/data, a session-wide temporary cache, the decoded
dataset and a small stratified subset of it. Tests use at most 2 CPU threads."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.data import ImageData, load_data, subset
from engine.methods import METHODS, RunContext
from engine.models import split_names
from engine.profiles import PROFILES
from engine.store import ResultsStore

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Only engine is installed (`pip install -e .`); the dashboard's package (app/) and the benchmarks (bench/) stay in
# the checkout, where Streamlit finds app/ beside dashboard.py. The tests of the pages and of the benchmarks import
# them from there. Appended, so that engine itself still comes from the installed package.
if str(PROJECT_ROOT) not in sys.path:
    sys.path.append(str(PROJECT_ROOT))
SHARED_TAR = PROJECT_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

# One thread per pytest-xdist worker (two workers share the two cores), else at most two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


MAIN_MODULE = sys.modules["__main__"]


@pytest.fixture(autouse=True)
def keep_main_module() -> Iterator[None]:
    """Streamlit's AppTest leaves the page it ran as `sys.modules["__main__"]`; a process started later with the
    spawn method (job workers, concurrent store writers) would re-run that page as its main module and die. Each test
    starts and ends with the test run's own `__main__`."""
    sys.modules["__main__"] = MAIN_MODULE
    yield
    sys.modules["__main__"] = MAIN_MODULE


@pytest.fixture(scope="session")
def shared_tar() -> Path:
    """The CIFAR-10 JPEG archive, `<project root>/../shared/data/cifar10-jpeg.tar.gz`."""
    if not SHARED_TAR.is_file():
        pytest.skip(f"test data missing: {SHARED_TAR.relative_to(PROJECT_ROOT.parent)} (see ../shared/data/README.md)")
    return SHARED_TAR


@pytest.fixture(scope="session")
def tmp_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary cache directory, also set as $COINFER_CACHE for the session."""
    path = tmp_path_factory.mktemp("session") / "cache"
    path.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COINFER_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def cifar(shared_tar: Path, tmp_cache: Path) -> ImageData:
    """The whole CIFAR-10 archive, decoded once into the session cache."""
    return load_data(shared_tar, cache_dir=tmp_cache)


@pytest.fixture(scope="session")
def small_data(cifar: ImageData) -> ImageData:
    """1,200 training and 400 test images of `cifar`, class-stratified, seed 0."""
    return subset(cifar, 1200, 400, seed=0)


def cache_sharing_data(root: Path, session_cache: Path, subdirs: tuple[str, ...] = ("data",)) -> Path:
    """A fresh cache under `root` whose `subdirs` link the session cache's files (decoded datasets: no second decode;
    models: no second training), lock files left out."""
    cache = root / "cache"
    for sub in subdirs:
        (cache / sub).mkdir(parents=True)
        for f in (session_cache / sub).glob("*"):
            if not f.name.endswith(".lock"):
                (cache / sub / f.name).symlink_to(f)
    return cache


def use_cache(monkeypatch: pytest.MonkeyPatch, cache: Path, tar: Path) -> Path:
    """Point the engine at `cache` ($COINFER_CACHE) and the CIFAR tar ($COINFER_DATA)."""
    monkeypatch.setenv("COINFER_CACHE", str(cache))
    monkeypatch.setenv("COINFER_DATA", str(tar))
    return cache


@pytest.fixture()
def fresh_cache(tmp_path: Path, tmp_cache: Path, shared_tar: Path, cifar: ImageData,
                monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty results store, job table and model cache ($COINFER_CACHE), with the CIFAR tar as $COINFER_DATA."""
    return use_cache(monkeypatch, cache_sharing_data(tmp_path, tmp_cache), shared_tar)


def measured_original(root: Path, session_cache: Path, data: ImageData) -> Path:
    """A fresh cache under `root` with the smoke base model and its `original` rows at every split. The model is
    trained once per test session, in the session cache, and linked here."""
    cache = cache_sharing_data(root, session_cache)
    profile = PROFILES.get("smoke")
    ctx = RunContext(data, profile, session_cache)
    method = METHODS.get("original")
    rows = [method.run(v, ctx) for v in method.variants(profile.base_config(data.fingerprint), split_names())
            if v.knob("bits") == 8]  # one row per split
    ResultsStore(cache / "results.sqlite").put_many(rows)
    (cache / "models").mkdir(exist_ok=True)
    for f in (session_cache / "models").glob("*"):
        (cache / "models" / f.name).symlink_to(f)
    return cache


@contextlib.contextmanager
def served(bundle: Path, cache: Path, expect: str) -> Iterator[tuple[str, dict[str, str]]]:
    """`python -m engine serve` of `bundle` on a free port, for tests that drive it with `device`: yields its
    HOST:PORT (after checking its first line names `expect`, e.g. "original @ conv5_x") and the environment to run
    commands in; stops the server at the end."""
    env = {**os.environ, "COINFER_CACHE": str(cache), "PYTHONPATH": str(PROJECT_ROOT)}
    serve = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--bundle", str(bundle), "--port", "0",
                              "--threads", "1"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        line = serve.stdout.readline()
        assert f"serving {expect}" in line, line
        yield line.split(" on ")[1].split(";")[0], env
    finally:
        serve.terminate()
        serve.wait(timeout=10)
