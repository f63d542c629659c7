"""The command line: each command runs on the smoke profile (user mistakes, one line and exit 2 each, are in
the hostile corpus, tests/hostile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main


def test_data_and_profile(fresh_cache: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "1200 / 400 images, 3x32x32, 10 classes" in out
    assert main(["profile", "--profile", "smoke", "--width", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "conv4_x" in out and "1110.85" in out  # device MFLOPs of the whole width-1.0 model at device_only
    assert main(["profile", "--profile", "smoke", "--width", "1.0", "--json"]) == 0
    splits = {r["split"]: r for r in json.loads(capsys.readouterr().out)}
    assert round(splits["device_only"]["device_flops"] / 1e6, 2) == 1110.85 and splits["conv4_x"]["width"] == 1.0


def test_train_base_takes_a_recipe_of_its_own(fresh_cache: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe's knobs on the command line reach the base model's config (and so its id); nothing else moves."""
    import dataclasses

    import engine.train
    from engine.profiles import PROFILES

    asked = []

    def record(cfg, data, cache, progress=None):  # noqa: ANN001, ANN202 - stands in for training
        asked.append(cfg)
        return None, {"metrics": {"test_accuracy": 0.5, "val_accuracy": 0.5, "train_seconds": 1.0, "device": "cpu"}}

    monkeypatch.setattr(engine.train, "load_or_train_base", record)
    argv = ["train-base", "--profile", "paper-cpu", "--epochs", "3", "--batch-size", "64", "--lr", "0.05",
            "--weight-decay", "1e-4", "--label-smoothing", "0", "--ema", "0.99"]
    assert main(argv) == 0 and "3 epochs" in capsys.readouterr().out
    profile = PROFILES.get("paper-cpu").base_config(asked[0].dataset)
    assert asked[0] == dataclasses.replace(profile, epochs=3, batch_size=64, lr=0.05, weight_decay=1e-4,
                                           label_smoothing=0.0, ema=0.99)
    assert asked[0].id != profile.id and asked[0].profile == "paper-cpu"


def test_run_original_then_results(fresh_cache: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "original", "--profile", "smoke", "--split", "conv4_x", "--split", "server_only"]) == 0
    capsys.readouterr()
    assert main(["results", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["split"], r["knobs"]["bits"]) for r in rows) == [("conv4_x", 4), ("conv4_x", 8),
                                                                        ("server_only", 8)]
    assert main(["results", "--csv"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("id,method,split") and '"{""bits"": 8}"' in out  # nested values as JSON
    # narrowed to one base model (resolved like the other commands), or by column
    assert main(["results", "--profile", "smoke", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["results", "--profile", "smoke", "--width", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["results", "--width", str(rows[0]["width"]), "--seed", "0", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["results", "--seed", "3"]) == 0
    assert "no results with these options yet" in capsys.readouterr().out


def test_a_schedule_prints_as_the_sizes_option_takes_it() -> None:
    from engine.cli.prepare import runs as _runs

    assert _runs((16, 16, 24, 32, 32, 32)) == "16x2,24x1,32x3"
    assert _runs((0.5, 0.5, 0.75, 1.0)) == "0.5x2,0.75x1,1x1"


# -- sweep, jobs, worker, best ---------------------------------------------------------------------------------


def _row(id: str, method: str, split: str, flops: float, bits: float, acc: float, memory: float = 1e6,
         server: float = 0.0) -> dict:
    return {"id": id, "method": method, "split": split, "device_flops": flops, "server_flops": server,
            "device_memory_bytes": memory, "bits_actual": bits, "bits_ideal": bits / 2, "accuracy": acc,
            "deployed_val_accuracy": acc, "base_id": "b1", "base_val_accuracy": 0.97}


BEST_ROWS = [  # pi3: 24 GFLOP/s, 1 GB; rtx2080ti: 13.45 TFLOP/s
    _row("o-conv4", "original", "conv4_x", 2.4e9, 8e4, 0.95),  # 0.1 s + 80 kbit
    _row("o-server", "original", "server_only", 0.0, 1.6e5, 0.95, server=1.345e10),  # 160 kbit + 1 ms
    _row("t-conv4", "three_step", "conv4_x", 4.8e8, 8e3, 0.94),  # 0.02 s + 8 kbit
    _row("t-stem", "three_step", "stem", 2.4e7, 3.2e5, 0.96),  # 1 ms + 320 kbit
    _row("b-conv5", "bottlenet_pp", "conv5_x", 2.4e10, 100.0, 0.99, memory=2e9),  # does not fit the Pi's 1 GB
    _row("p-conv4", "two_step_pruning", "conv4_x", 2.4e6, 10.0, 0.50),  # fast but inaccurate
]


@pytest.fixture()
def best_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))
    from engine.store import ResultsStore

    ResultsStore().put_many(BEST_ROWS)


def test_best_picks_the_lowest_latency_feasible_accurate_variant(best_store: None,
                                                                 capsys: pytest.CaptureFixture) -> None:
    argv = ["best", "--rate", "40kB/s", "--device", "pi3", "--server", "rtx2080ti", "--threshold", "0.93"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rate_bps"] == 320_000
    got = [(r["method"], r["id"], r["latency"]) for r in out["per_method"]]
    assert [g[:2] for g in got] == [("three_step", "t-conv4"), ("original", "o-conv4")]  # no infeasible/inaccurate
    assert got[0][2] == pytest.approx(0.02 + 8e3 / 320e3)
    assert got[1][2] == pytest.approx(0.1 + 8e4 / 320e3)
    assert out["best"]["id"] == "t-conv4"
    assert main(["best", "--rate", "10MB/s", "--threshold", "0.93", "--json"]) == 0  # a fast link: send the PNG
    out = json.loads(capsys.readouterr().out)
    assert out["best"]["id"] == "o-server" and out["best"]["latency"] == pytest.approx(1.6e5 / 8e7 + 1e-3)
    assert [r["id"] for r in out["per_method"]] == ["o-server", "t-stem"]
    assert main(["best", "--rate", "40kB/s", "--any-accuracy", "--json"]) == 0  # the inaccurate one wins
    assert json.loads(capsys.readouterr().out)["best"]["id"] == "p-conv4"
    assert main(["best", "--rate", "40kB/s", "--json"]) == 0  # the default drop: 97 % - 2 points on validation
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == pytest.approx(0.95) and [r["id"] for r in out["per_method"]] == ["o-conv4", "t-stem"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "best: three_step at conv4_x (t-conv4), latency 45 ms" in text and "40 kB/s (320 kbit/s)" in text
    assert main([*argv[:-1], "0.999"]) == 0
    assert "no measured variant fits" in capsys.readouterr().out
    pi3_by_hand = ["best", "--rate", "40kB/s", "--device", "24GFLOP/s,1GB", "--server", "13.45TFLOP/s,11GB",
                   "--threshold", "0.93", "--json"]  # the presets typed as one's own machines: the same pick
    assert main(pi3_by_hand) == 0
    assert json.loads(capsys.readouterr().out)["best"]["id"] == "t-conv4"
    assert main([*argv, "--width", "0.5", "--json"]) == 0  # narrowed as `results` narrows: none of width 0.5
    assert json.loads(capsys.readouterr().out)["best"] is None
    assert main([*argv, "--width", "0.5"]) == 0
    assert "no results with these options yet: run `python -m engine sweep` first" in capsys.readouterr().out


def test_best_counts_a_propagation_delay(best_store: None, capsys: pytest.CaptureFixture) -> None:
    argv = ["best", "--rate", "40kB/s", "--threshold", "0.93"]
    assert main([*argv, "--delay", "30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["delay_s"] == pytest.approx(0.03) and out["best"]["id"] == "t-conv4"
    assert out["best"]["t_propagation"] == pytest.approx(0.03)
    assert out["best"]["latency"] == pytest.approx(0.02 + 8e3 / 320e3 + 0.03)
    assert main([*argv, "--delay-ms", "30"]) == 0  # the same option under its other name
    text = capsys.readouterr().out
    assert "40 kB/s (320 kbit/s), 30 ms delay" in text and "latency 75 ms" in text and "t_propagation" in text
    assert main([*argv, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)  # no delay: the paper's model, as before
    assert plain["delay_s"] == 0 and "t_propagation" not in plain["best"]
    assert plain["best"]["latency"] == pytest.approx(0.02 + 8e3 / 320e3)
    for bad in ("-1", "inf", "soon"):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--delay", bad])
        assert exit_info.value.code == 2
    assert "--delay" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    env = {**os.environ, "COINFER_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "results"], cwd=Path(__file__).parents[2], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head` does once it has read enough
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""


def test_jobs_commands_submit_once_cancel_retry(fresh_cache: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.queue import JobQueue

    submit = ["jobs", "submit", "original", "--profile", "smoke", "--split", "conv4_x", "--split", "stem",
              "--knob", "bits=4"]
    assert main(submit) == 0
    assert main(submit) == 0  # a second session submitting the same variants
    jobs = JobQueue().jobs()
    assert len(jobs) == 2 and {j.status for j in jobs} == {"queued"}
    assert {j.spec.knobs["bits"] for j in jobs} == {4}
    capsys.readouterr()
    assert main(["jobs", "cancel", jobs[0].id[:8]]) == 0
    assert capsys.readouterr().out.strip() == f"{jobs[0].id}: cancelled"
    assert main(["jobs", "retry", jobs[0].id]) == 0
    assert JobQueue().get(jobs[0].id).status == "queued"
    assert main(["jobs", "cancel", "--all"]) == 0
    assert main(["jobs", "list", "--status", "cancelled"]) == 0
    out = capsys.readouterr().out
    assert out.count("cancelled") >= 2 and "2 cancelled" in out and "0 live worker(s)" in out
    assert main(["jobs", "clean"]) == 0
    assert JobQueue().jobs() == []


@pytest.fixture()
def trained_fresh_cache(fresh_cache: Path, tmp_cache: Path, small_data) -> Path:  # noqa: ANN001
    from engine.profiles import PROFILES
    from engine.train import load_or_train_base

    load_or_train_base(PROFILES.get("smoke").base_config(small_data.fingerprint), small_data, tmp_cache)
    (fresh_cache / "models").mkdir()
    for f in (tmp_cache / "models").glob("base-*"):
        if not f.name.endswith(".lock"):
            (fresh_cache / "models" / f.name).symlink_to(f)
    return fresh_cache


def test_sweep_runs_queued_variants_with_a_worker_process(trained_fresh_cache: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    argv = ["sweep", "--profile", "smoke", "--method", "original", "--split", "device_only", "--split", "conv4_x"]
    assert main([*argv, "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "sweep smoke: base model" in out and "3 variants: original 3" in out  # conv4_x at 8 and 4 bits
    assert "sweep smoke finished in" in out and "first row after" in out
    assert main(["results", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["split"], r["knobs"]["bits"]) for r in rows) == [("conv4_x", 4), ("conv4_x", 8),
                                                                        ("device_only", 8)]
    assert main(argv) == 0
    assert "3 of 3 variants were already in the results store" in capsys.readouterr().out
    assert main([*argv, "--force", "--workers", "0"]) == 0
    assert "3 jobs queued" in capsys.readouterr().out


def test_worker_command_runs_queued_jobs_then_exits_when_idle(trained_fresh_cache: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from engine.queue import JobQueue
    from engine.store import ResultsStore

    assert main(["jobs", "submit", "original", "--profile", "smoke", "--split", "device_only"]) == 0
    (job,) = JobQueue().jobs()
    assert main(["worker", "--idle-exit", "1", "--heartbeat", "0.2", "--lease", "5"]) == 0
    assert "worker: 1 process(es)" in capsys.readouterr().out
    done = JobQueue().get(job.id)
    assert done.status == "done" and done.attempts == 1
    assert ResultsStore().get(job.id)["bits_actual"] == 4.0  # device_only sends the label: ceil(log2 10) bits
    assert JobQueue().live_workers() == []  # it said goodbye
