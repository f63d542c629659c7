"""What every case of the hostile corpus asserts, and what the cases share.

A case hands coinfer one hostile input (a command line, a dataset, a bundle, a selection or results file, protocol
frames, URL parameters) inside a `Sandbox`: a temporary folder whose `cache/` is $COINFER_CACHE. It must be refused
in one line (exit status 2 on the command line, an ERROR frame on the wire), with no traceback, no file written
outside the cache (in the sandbox or in the project) and, for data and bundles, no code run: `marker` is the file a
payload would create, and it must not exist afterwards."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# not the project's files: the cache, tools' caches, and the dashboard's static folder (plotly.js, written once)
_SKIPPED = {".git", "cache", "__pycache__", ".pytest_cache", ".ruff_cache", ".venv", "static",
            "test-output"}  # test-output: the browser test's screenshots, written while other tests run
_LOG_PREFIXES = ("DEBUG ", "INFO ", "WARNING ")  # the command line's log lines (not the refusal)


def one_line(text: str) -> str:
    """The one line of a refusal in `text` (log lines aside); fails on a traceback or on more lines.

    Args:
        text: what the command wrote to stderr, or an error's message.

    Returns:
        The line.
    """
    assert "Traceback" not in text, text[-2000:]
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(_LOG_PREFIXES)]
    assert len(lines) == 1, lines
    return lines[0]


def files_under(root: Path, skipped: set[str] = _SKIPPED) -> dict[str, tuple[int, int]]:
    """Every file under `root` but the `skipped` folders: relative path -> (size, modification time)."""
    out = {}
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skipped]
        for name in names:
            path = Path(dirpath) / name
            with contextlib.suppress(OSError):
                info = path.lstat()
                out[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return out


class Sandbox:
    """One case's folder: `inputs/` for what the case crafts, `cache/` for $COINFER_CACHE (the only place a refusal
    may write) and `marker`, the file a payload would create."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inputs, self.cache, self.marker = root / "inputs", root / "cache", root / "pwned"
        self.inputs.mkdir(parents=True)
        self.cache.mkdir()
        self._before: tuple[dict, dict] | None = None

    def freeze(self) -> None:
        """Remember the files outside the cache (call after crafting the inputs)."""
        self._before = files_under(self.root), files_under(PROJECT_ROOT)

    def assert_untouched(self) -> None:
        """Nothing was written outside the cache, in the sandbox or in the project, and no payload ran."""
        assert self._before is not None, "freeze() first"
        assert not self.marker.exists(), "a payload ran"
        assert files_under(self.root) == self._before[0], "a file was written outside the cache"
        now = files_under(PROJECT_ROOT)
        changed = sorted(k for k in now.keys() | self._before[1].keys() if now.get(k) != self._before[1].get(k))
        assert not changed, f"written in the project: {changed[:5]}"


@pytest.fixture(name="sandbox")
def sandbox_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_data: Path) -> Iterator[Sandbox]:
    """A Sandbox with $COINFER_CACHE in it and $COINFER_DATA the tiny ImageFolder, the working folder; after the
    case (which calls `freeze` once it has crafted its inputs), checked untouched. Import it as `sandbox_fixture`."""
    box = Sandbox(tmp_path / "box")
    monkeypatch.setenv("COINFER_CACHE", str(box.cache))
    monkeypatch.setenv("COINFER_DATA", str(tiny_data))
    monkeypatch.chdir(box.root)
    yield box
    box.assert_untouched()


def write_image_folder(root: Path, size: tuple[int, int] = (8, 8), n: int = 2, ext: str = "png") -> Path:
    """A tiny RGB ImageFolder: classes a and b, `n` images each under train/ and test/."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.{ext}")
    return root


@pytest.fixture(scope="session", name="tiny_data")
def tiny_data_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 8x8 ImageFolder (two classes, two images each per split), outside every sandbox."""
    return write_image_folder(tmp_path_factory.mktemp("tiny") / "tiny")


def run_main(argv: Sequence[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """`python -m engine ARGV` in this process: (exit status, stderr); argparse's refusal is an exit status too."""
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    return status, capsys.readouterr().err


def run_process(argv: Sequence[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m engine ARGV` as its own process, from the project root."""
    return subprocess.run([sys.executable, "-m", "engine", *argv], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    """A valid PNG of one colour."""
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


# The start of a script that measures, in a process of its own, the peak memory of loading each hostile input: the
# high-water mark of its resident memory is reset before each load (/proc/self/clear_refs) and read after it.
PEAK_SCRIPT = """
import json, sys
from engine.errors import UserError


def _memory(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024


def peak(load, path):
    '''(bytes above the resident memory before, the outcome) of load(path): "loaded", or the refusal's line.'''
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _memory("VmRSS")
    try:
        load(path)
        outcome = "loaded"
    except UserError as exc:
        assert "\\\\n" not in str(exc)
        outcome = str(exc)
    return _memory("VmHWM") - before, outcome
"""


def measure_peaks(script: str, args: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Run PEAK_SCRIPT + `script` (which prints a JSON {case: [peak bytes, outcome]} last) in a new process."""
    run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT + script, *args], capture_output=True, text=True,
                         cwd=PROJECT_ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    peaks = json.loads(run.stdout.strip().splitlines()[-1])
    print({case: f"{peak / 1e6:.0f} MB: {outcome[:90]}" for case, (peak, outcome) in peaks.items()})
    return peaks
