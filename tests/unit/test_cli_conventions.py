"""Command-line conventions: listing commands print parseable JSON with --json, and progress to a file or a pipe is
plain lines, never carriage returns."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.cli.common import Bar
from engine.config import VariantConfig
from engine.profiles import PROFILES
from engine.queue import JobQueue, JobSpec


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path))
    return tmp_path


def test_jobs_json_parses(empty_cache: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["jobs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    cfg = VariantConfig.make("original", "conv4_x", PROFILES.get("smoke").base_config("f" * 16), bits=8)
    JobQueue().submit([JobSpec.for_variant(cfg, "smoke", None)], [0])
    for argv in (["jobs", "--json"], ["jobs", "list", "--json"], ["jobs", "list", "--status", "queued", "--json"]):
        assert main(argv) == 0
        jobs = json.loads(capsys.readouterr().out)
        assert [(j["id"], j["status"], j["method"], j["split"]) for j in jobs] == [
            (cfg.id, "queued", "original", "conv4_x")]
    assert main(["jobs", "list", "--status", "done", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_progress_to_a_file_is_one_line_per_step() -> None:
    out = io.StringIO()
    bar = Bar("train", out)
    for i in range(1000):
        bar(i / 1000, f"epoch {i // 100 + 1}/10 loss {1 / (i + 1):.3f}")
    bar(1.0, "measuring")
    bar(1.0, "measuring")
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "train:   0% epoch 1/10 loss 1.000" and lines[-1] == "train: 100% measuring"
    assert len(lines) == 101  # one per whole percent, one for the new step


def test_progress_prints_the_last_state_on_close() -> None:
    out = io.StringIO()
    bar = Bar("x", out)
    bar(0.5, "step 1")
    bar(0.501, "step 2")
    bar.close()
    assert out.getvalue().splitlines() == ["x:  50% step 1", "x:  50% step 2"]
