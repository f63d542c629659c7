"""A search started in the background: the request's command line reads back as the same study, and a study runs in
one detached process at a time."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.errors import UserError
from engine.latency import DEVICES, DeviceProfile, resolve_device, to_rate_bps
from engine.models import normalize_reference
from engine.profiles import PROFILES
from engine.search import Environment, SearchConfig, launch
from engine.search.launch import SearchRequest, device_arg, rate_arg

PI3, GPU = DEVICES.get("pi3"), DEVICES.get("rtx2080ti")
FINGERPRINT = "0123456789abcdef"


def _as_the_command_reads_it(request: SearchRequest) -> SearchConfig:
    """The study `python -m engine search` runs for these arguments (engine.cli.search.run, without the data)."""
    args = build_parser()[0].parse_args(request.argv())
    env = Environment(resolve_device(args.device), resolve_device(args.server), to_rate_bps(args.rate),
                      args.delay / 1e3)
    base = PROFILES.get(args.profile).base_config(FINGERPRINT, width=args.width, seed=args.seed,
                                                  model=normalize_reference(args.model or "resnet18"))
    methods = tuple(dict.fromkeys(args.method or ["three_step"]))
    return SearchConfig(PROFILES.get(args.profile).name, base, env, args.objective, args.drop / 100.0, methods,
                        args.study_seed)


@pytest.mark.parametrize(("device", "rate_bps", "delay_s", "drop", "width"), [
    (PI3, 40e3 * 8, 0.0, 0.02, 0.125),
    (DeviceProfile("pi3", 24e9 * 1.5, 0.3e9, "Raspberry Pi 3 (edited)"), 37.5e3 * 8, 0.02, 0.035, 0.25),
    (DeviceProfile("pi3", 123456789.123, math.inf), 0.1e3 * 8 / 3, 0.0123, 0.07, 0.0625),
    (PI3, 1e9 * 8, 60.0, 0.0, 1.0),
])
def test_the_command_runs_the_study_the_page_names(device: DeviceProfile, rate_bps: float, delay_s: float,
                                                   drop: float, width: float) -> None:
    base = PROFILES.get("smoke").base_config(FINGERPRINT, width=width)
    for objective in ("latency", "front"):
        request = SearchRequest.of("smoke", device, GPU, rate_bps, delay_s=delay_s, drop=drop, objective=objective,
                                   width=width, model="resnet18", trials=5, workers=2)
        ours = request.config(base)
        assert _as_the_command_reads_it(request).key() == ours.key()
        assert ours.name.startswith(objective)
        env = request.environment()
        assert env.device.flops_per_s == pytest.approx(device.flops_per_s, rel=1e-12)
        assert env.device.memory_bytes == device.memory_bytes or env.device.memory_bytes == pytest.approx(
            device.memory_bytes, rel=1e-12)
        assert env.rate_bps == rate_bps and request.drop == pytest.approx(drop, abs=1e-15)
    argv = request.argv()
    assert argv[:3] == ["search", "--profile", "smoke"] and argv[-2:] == ["--trials", "5"]
    assert "--budget" not in argv and argv[argv.index("--workers") + 1] == "2"
    minutes = SearchRequest.of("smoke", device, GPU, rate_bps, budget_min=45, width=width).argv()
    assert minutes[minutes.index("--budget") + 1] == "45.0min" and "--trials" not in minutes


def test_device_and_rate_texts() -> None:
    assert device_arg(PI3) == "pi3" and device_arg(GPU) == "rtx2080ti"
    # the sidebar's unedited preset, through its GFLOP/s and MB fields
    assert device_arg(DeviceProfile("rtx2080ti", 13.45e12 / 1e9 * 1e9, 11e9 / 1e6 * 1e6)) == "rtx2080ti"
    edited = DeviceProfile("pi3", 30e9, 1e9)
    assert device_arg(edited) == "30000000000.0FLOP/s,1000000000.0B"
    assert resolve_device(device_arg(edited)).flops_per_s == 30e9
    assert device_arg(DeviceProfile("x", 1e9, math.inf)) == "1000000000.0FLOP/s"
    assert rate_arg(40e3 * 8) == "40kB/s" and rate_arg(1e9 * 8) == "1000000kB/s"
    for rate in (37.5e3 * 8, 1234.5678, 800.0, 1e-3 * 8e3 * 100):
        assert to_rate_bps(rate_arg(rate)) == rate
    with pytest.raises(UserError, match="objective"):
        SearchRequest("smoke", objective="fastest").config(PROFILES.get("smoke").base_config(FINGERPRINT))


def _wait(predicate, timeout: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_study_runs_in_one_detached_process_at_a_time(tmp_path: Path) -> None:
    cache, name = tmp_path / "cache", "latency-abc"
    request = SearchRequest("smoke", trials=3)
    assert not launch.running(name, cache) and launch.last_run(name, cache) is None
    sleeper = [sys.executable, "-c", "import sys, time; print('searching', flush=True); time.sleep(60)"]
    pid = launch.start(request, name, cache, command=sleeper)
    try:
        assert launch.running(name, cache)
        record = launch.last_run(name, cache)
        assert record["pid"] == pid and record["argv"] == request.argv() and record["returncode"] is None
        assert Path(record["log"]).parent == cache / "search" / "logs"
        with pytest.raises(launch.SearchRunning, match="running already"):  # a second start is refused
            launch.start(request, name, cache, command=sleeper)
        assert launch.last_run(name, cache)["pid"] == pid
        assert not launch.running("latency-other", cache)  # another study may start meanwhile
        assert _wait(lambda: launch.log_tail(launch.last_run(name, cache)) == "searching")
    finally:
        assert launch.stop(name, cache)
    assert _wait(lambda: not launch.running(name, cache))
    assert _wait(lambda: launch.last_run(name, cache)["returncode"] is not None)
    assert launch.last_run(name, cache)["returncode"] != 0 and not launch.stop(name, cache)
    # once it has ended, the same study starts again (the command resumes it)
    quick = [sys.executable, "-c", "import sys; print('error: no data'); sys.exit(2)"]
    again = launch.start(request, name, cache, command=quick)
    assert again != pid
    assert _wait(lambda: launch.last_run(name, cache)["returncode"] == 2)
    assert not launch.running(name, cache)
    assert launch.log_tail(launch.last_run(name, cache)) == "error: no data"
    assert launch.log_tail(None) == "" and launch.log_tail({"log": str(tmp_path / "gone.log")}) == ""


def test_a_damaged_record_or_lock_is_one_line(tmp_path: Path) -> None:
    cache, name = tmp_path / "cache", "latency-abc"
    launch.run_dir(cache).mkdir(parents=True)
    for text in ("not json", "[1, 2]", '{"pid": "1; rm -rf /", "started_at": 1, "log": "x"}',
                 '{"pid": 12, "started_at": "yesterday", "log": "x"}', '{"pid": 12, "started_at": 1e999, "log": 3}'):
        launch.record_path(name, cache).write_text(text)
        assert launch.last_run(name, cache) is None, text
    assert not launch.stop(name, cache)
    launch.lock_path(name, cache).mkdir()  # where the lock file should be
    assert not launch.running(name, cache)
    with pytest.raises(UserError, match="could not be started") as err:
        launch.start(SearchRequest("smoke", trials=1), name, cache, command=[sys.executable, "-c", "pass"])
    assert "\n" not in str(err.value)


def test_the_command_holds_its_study_s_lock_unless_its_launcher_does(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.search.launch import LOCKED_ENV, SearchRunning, hold, running

    monkeypatch.delenv(LOCKED_ENV, raising=False)
    fd = hold("latency-abc", tmp_path)
    assert fd is not None and running("latency-abc", tmp_path)  # the page sees a study run from a shell
    with pytest.raises(SearchRunning, match="running already"):
        hold("latency-abc", tmp_path)
    os.close(fd)
    assert not running("latency-abc", tmp_path)
    monkeypatch.setenv(LOCKED_ENV, "latency-abc")  # started by the page: the lock is inherited
    assert hold("latency-abc", tmp_path) is None
