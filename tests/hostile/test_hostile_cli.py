"""Hostile command lines: numbers out of range (infinite, NaN, past 64 bits, a billion processes), unknown names,
malformed rates and sizes, files that are FIFOs, folders or far too large, an unwritable cache. Each is one line on
stderr and exit status 2 before any work starts; most run `main(argv)` in this process, a few a real process."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from corpus import Sandbox, one_line, run_main, run_process, sandbox_fixture, tiny_data_fixture  # noqa: F401

Prepare = Callable[[Sandbox, pytest.MonkeyPatch], None]


def _fifo(name: str) -> Prepare:
    return lambda box, mp: os.mkfifo(box.inputs / name)


def _sparse(name: str, size: int) -> Prepare:
    def make(box: Sandbox, mp: pytest.MonkeyPatch) -> None:
        with open(box.inputs / name, "wb") as f:
            f.truncate(size)  # on paper only

    return make


def _text(name: str, text: str) -> Prepare:
    return lambda box, mp: (box.inputs / name).write_text(text)


def _folder(name: str) -> Prepare:
    return lambda box, mp: (box.inputs / name).mkdir()


def _cache_under_a_file(box: Sandbox, mp: pytest.MonkeyPatch) -> None:
    (box.inputs / "file").write_text("")
    mp.setenv("COINFER_CACHE", str(box.inputs / "file" / "cache"))


def _data_missing(box: Sandbox, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("COINFER_DATA", str(box.inputs / "nowhere"))


JSCC = ["jobs", "submit", "three_step", "--profile", "smoke", "--split", "stem", "--knob", "encoder=jscc"]
SUBMIT = ["jobs", "submit", "original", "--profile", "smoke", "--split", "stem"]

# (argv with {in} for the sandbox's inputs folder, what the line says, what the case crafts first)
CASES: dict[str, tuple[list[str], str, Prepare | None]] = {
    # numbers the argument types refuse
    "width 0": (["profile", "--width", "0"], "must be a finite number > 0", None),
    "width inf": (["profile", "--width", "inf"], "must be a finite number > 0", None),
    "width nan": (["profile", "--width", "nan"], "must be a finite number > 0", None),
    "width negative": (["profile", "--width", "-1"], "must be a finite number > 0", None),
    "width text": (["profile", "--width", "abc"], "not a number: 'abc'", None),
    "width 1e6": (["profile", "--profile", "smoke", "--width", "1e6"], "width must be between", None),
    "width 1e-300": (["profile", "--profile", "smoke", "--width", "1e-300"], "width must be between", None),
    "seed -1": (["profile", "--seed", "-1"], "must be from 0 to 2**63 - 1", None),
    "seed past 64 bits": (["profile", "--seed", "99999999999999999999999"], "must be from 0 to 2**63 - 1", None),
    "seed fraction": (["profile", "--seed", "1.5"], "not a whole number", None),
    "port 99999": (["serve", "--bundle", "b", "--port", "99999"], "a TCP port from 0 to 65535", None),
    "port -1": (["serve", "--bundle", "b", "--port", "-1"], "a TCP port from 0 to 65535", None),
    "max-message -1": (["serve", "--bundle", "b", "--max-message", "-1"], "from 1 to 1,073,741,824 bytes", None),
    "max-message 1e11": (["serve", "--bundle", "b", "--max-message", "99999999999"], "from 1 to 1,073,741,824",
                         None),
    "read-timeout inf": (["serve", "--bundle", "b", "--read-timeout", "inf"], "seconds > 0 and at most 604800",
                         None),
    "read-timeout 0": (["serve", "--bundle", "b", "--read-timeout", "0"], "seconds > 0 and at most 604800", None),
    "read-timeout nan": (["serve", "--bundle", "b", "--read-timeout", "nan"], "seconds > 0", None),
    "max-pending 0": (["serve", "--bundle", "b", "--max-pending", "0"], "must be >= 1", None),
    "max-devices -3": (["serve", "--bundle", "b", "--max-devices", "-3"], "must be >= 1", None),
    "threads a million": (["serve", "--bundle", "b", "--threads", "1000000"], "from 1 to 1024", None),
    "threads 0": (["device", "--bundle", "b", "--threads", "0"], "from 1 to 1024", None),
    "delay nan": (["device", "--bundle", "b", "--delay", "nan"], "a finite number >= 0", None),
    "delay inf": (["device", "--bundle", "b", "--delay", "inf"], "a finite number >= 0", None),
    "delay negative": (["device", "--bundle", "b", "--delay", "-5"], "a finite number >= 0", None),
    "images 0": (["device", "--bundle", "b", "--images", "0"], "must be >= 1", None),
    "runtime unknown": (["device", "--bundle", "b", "--runtime", "java"], "invalid choice: 'java'", None),
    "processes 100000": (["worker", "--processes", "100000"], "--processes: must be from 0 to", None),
    "processes -1": (["worker", "--processes", "-1"], "--processes: must be from 0 to", None),
    "heartbeat inf": (["worker", "--heartbeat", "inf"], "seconds > 0 and at most 604800", None),
    "lease 1e300": (["worker", "--lease", "1e300"], "seconds > 0 and at most 604800", None),
    "idle-exit 0": (["worker", "--idle-exit", "0"], "seconds > 0", None),
    "lease under twice the heartbeat": (["worker", "--lease", "2", "--heartbeat", "1"],
                                        "must be more than twice --heartbeat", None),
    "sweep workers 100000": (["sweep", "--profile", "smoke", "--workers", "100000"], "--workers: must be from 0 to",
                             None),
    "grace inf": (["jobs", "cancel", "--all", "--grace", "inf"], "seconds > 0 and at most 604800", None),
    "grace negative": (["jobs", "cancel", "--all", "--grace", "-1"], "seconds > 0", None),
    "sizes of 1e11 epochs": (["train-base", "--sizes", "16x99999999999"], "at most 1000 epochs", None),
    "sizes of 99999 pixels": (["train-base", "--sizes", "99999x1"], "sizes up to 1024 pixels", None),
    "sizes text": (["train-base", "--sizes", "abc"], "e.g. 16x6,24x4,32x3", None),
    "sizes without epochs": (["train-base", "--sizes", "16x"], "e.g. 16x6,24x4,32x3", None),
    "sizes zero": (["train-base", "--sizes", "16x2,0"], "must be positive", None),
    "sizes zero epochs": (["train-base", "--sizes", "16x0,32x2"], "must be positive", None),
    "sizes negative epochs": (["train-base", "--sizes", "16x-1"], "must be positive", None),
    "ema of 1": (["train-base", "--ema", "1"], "e.g. 0.999", None),
    "ema nan": (["train-base", "--ema", "nan"], "e.g. 0.999", None),
    "epochs 0": (["train-base", "--profile", "paper-cpu", "--epochs", "0"], "must be from 1 to 1000", None),
    "epochs and sizes": (["train-base", "--epochs", "3", "--sizes", "16x3"], "not allowed with argument", None),
    "epochs of a resizing profile": (["train-base", "--profile", "quick", "--epochs", "3"], "give the schedule with "
                                     "--sizes instead", None),
    "batch of a billion": (["train-base", "--batch-size", "1000000000"], "must be from 1 to 65536", None),
    "lr inf": (["train-base", "--lr", "inf"], "a number > 0 and at most 10", None),
    "lr 0": (["train-base", "--lr", "0"], "a number > 0 and at most 10", None),
    "weight decay 1": (["train-base", "--weight-decay", "1"], "a number from 0 to below 1", None),
    "label smoothing nan": (["train-base", "--label-smoothing", "nan"], "a number from 0 to below 1", None),
    "drop nan": (["noisy", "--profile", "smoke", "--drop", "nan"], "--drop is in points, from 0 to 100", None),
    "drop negative": (["noisy", "--profile", "smoke", "--drop", "-5"], "--drop is in points", None),
    "bandwidth inf": (["noisy", "--bandwidth", "inf"], "must be a finite number > 0", None),
    "channel unknown": (["noisy", "--channel", "wifi"], "invalid choice: 'wifi'", None),
    # rates, devices and thresholds
    "rate negative": (["best", "--rate=-40kB/s"], "a link rate must be a positive finite number", None),
    "rate unit unknown": (["best", "--rate", "40kX/s"], "cannot read the rate '40kX/s'", None),
    "rate without unit": (["best", "--rate", "40k"], "cannot read the rate '40k'", None),
    "rate 1e400": (["best", "--rate", "1e400kB/s"], "a link rate must be a positive finite number", None),
    "rate nan": (["best", "--rate", "nankB/s"], "cannot read the rate", None),
    "search without budget": (["search", "--profile", "smoke", "--rate", "40kB/s"], "give the search a budget", None),
    "search budget unit": (["search", "--profile", "smoke", "--rate", "40kB/s", "--budget", "5 parsecs"],
                           "cannot read the duration '5 parsecs'", None),
    "search budget huge": (["search", "--profile", "smoke", "--rate", "40kB/s", "--budget", "1e12h"],
                           "longer than a year", None),
    "search drop over 100": (["search", "--profile", "smoke", "--rate", "40kB/s", "--trials", "2", "--drop", "101"],
                             "must be a number of points from 0 to 100", None),
    "search seeds zero": (["search", "--profile", "smoke", "--rate", "40kB/s", "--trials", "2", "--seeds", "0"],
                          "must be >= 1", None),
    "rate inf": (["best", "--rate", "inf"], "cannot read the rate 'inf'", None),
    "rate zero": (["device", "--bundle", "b", "--rate", "0kB/s"], "a link rate must be a positive finite number",
                  None),
    "device unknown": (["best", "--rate", "40kB/s", "--device", "pi4"], "unknown device 'pi4'", None),
    "server unknown": (["best", "--rate", "40kB/s", "--server", "tpu"], "unknown device 'tpu'", None),
    "device speed 1e999": (["best", "--rate", "40kB/s", "--device", "1e999GFLOP/s"],
                           "a compute speed must be a positive finite number", None),
    "device memory negative": (["best", "--rate", "40kB/s", "--device", "10GFLOP/s,-5MB"],
                               "a memory size must be a positive finite number", None),
    "device memory inf": (["best", "--rate", "40kB/s", "--device", "10GFLOP/s,infMB"],
                          "cannot read the memory size 'infMB'", None),
    "threshold 93": (["best", "--rate", "40kB/s", "--threshold", "93"], "--threshold is a fraction in [0, 1]", None),
    "threshold nan": (["best", "--rate", "40kB/s", "--threshold", "nan"], "--threshold is a fraction in [0, 1]",
                      None),
    # names
    "no command": ([], "the following arguments are required: command", None),
    "command unknown": (["pwn"], "invalid choice: 'pwn'", None),
    "profile unknown": (["profile", "--profile", "huge"], "unknown profile 'huge'", None),
    "split unknown": (["run", "original", "--profile", "smoke", "--split", "conv9_x"],
                      "unknown split point 'conv9_x'", None),
    "method unknown": (["run", "nonsense", "--profile", "smoke"], "unknown method 'nonsense'", None),
    "method as code": (["run", "__import__('os').system('touch pwned')", "--profile", "smoke"], "unknown method",
                       None),
    "sweep profile unknown": (["sweep", "--profile", "huge"], "unknown profile 'huge'", None),
    "sweep method unknown": (["sweep", "--profile", "smoke", "--method", "nope"], "unknown method 'nope'", None),
    "scheduler not an address": (["sweep", "--profile", "smoke", "--scheduler", "nonsense"],
                                 "Dask scheduler address", None),
    "status unknown": (["jobs", "list", "--status", "nope"], "invalid choice: 'nope'", None),
    "job unknown": (["jobs", "cancel", "ffffffff"], "no job 'ffffffff'", None),
    "job id too short": (["jobs", "show", "ab"], "too short", None),
    "retry of nothing": (["jobs", "retry"], "name the job(s) to retry", None),
    "export of no variant": (["export", "--id", "nope", "--out", "{in}/b.zip"], "no variant(s) in the results store",
                             None),
    "footprint of no bundle": (["footprint", "--bundle", "{in}/none.zip", "--runtime", "onnx"],
                               "failed: no bundle at", None),
    "footprint of no variant": (["footprint", "--id", "nope"], "no variant(s) in the results store", None),
    "footprint of no base": (["footprint", "--base", "nope"], "no variant of base model nope", None),
    "footprint runtime unknown": (["footprint", "--base", "x", "--runtime", "tflite"], "invalid choice: 'tflite'",
                                  None),
    "search memory unknown": (["search", "--rate", "40kB/s", "--trials", "1", "--memory", "ram"],
                              "invalid choice: 'ram'", None),
    # knobs
    "submit split unknown": ([*SUBMIT[:-1], "conv9_x"], "unknown split point 'conv9_x'", None),
    "knob without value": ([*SUBMIT, "--knob", "bits"], "NAME=VALUE", None),
    "knob empty value": ([*SUBMIT, "--knob", "bits="], "NAME=VALUE", None),
    "knob bits 99": ([*SUBMIT, "--knob", "bits=99"], "knob bits must be in [1, 16], got 99", None),
    "knob bits nan": ([*SUBMIT, "--knob", "bits=nan"], "knob bits must be a whole number", None),
    "knob bits 1e999": ([*SUBMIT, "--knob", "bits=1e999"], "knob bits must be a whole number", None),
    "knob bits past 64 bits": ([*SUBMIT, "--knob", "bits=99999999999999999999999"], "knob bits must be in [1, 16]",
                               None),
    "knob bits a list": ([*SUBMIT, "--knob", "bits=[8]"], "knob bits must be a whole number", None),
    "knob bits an object": ([*SUBMIT, "--knob", 'bits={"__class__": 1}'], "knob bits must be a whole number",
                            None),
    "knob unknown": ([*SUBMIT, "--knob", "x=1"], "original has no knob 'x'", None),
    "knob snapshot -1": (["jobs", "submit", "three_step", "--profile", "smoke", "--split", "stem", "--knob",
                          "snapshot=-1"], "knob snapshot is a level from 0 to", None),
    "jscc uses a billion": ([*JSCC, "--knob", "jscc_uses=1000000000"], "jscc needs uses from 1 to 65,536", None),
    "jscc uses 0": ([*JSCC, "--knob", "jscc_uses=0"], "jscc needs uses from 1 to 65,536", None),
    "jscc lr inf": ([*JSCC, "--knob", "jscc_lr=1e999"], "a finite lr > 0", None),
    # files
    "results file a FIFO": (["import", "{in}/rows.json"], "not a regular file", _fifo("rows.json")),
    "results file a device": (["import", "/dev/zero"], "not a regular file", None),
    "results file a folder": (["import", "{in}/rows"], "cannot read", _folder("rows")),
    "results file missing": (["import", "{in}/none.json"], "cannot read", None),
    "results file of 100 MB": (["import", "{in}/rows.json"], "over the 67,108,864-byte limit",
                               _sparse("rows.json", 100 << 20)),
    "results file not JSON": (["import", "{in}/rows.json"], "not JSON", _text("rows.json", "hello")),
    "export into a folder": (["results", "--export", "{in}/out"], "cannot write", _folder("out")),
    "bundle missing": (["device", "--bundle", "{in}/none.zip"], "no bundle at", None),
    "bundle a text file": (["serve", "--bundle", "{in}/notes.txt"], "neither a bundle directory nor a bundle .zip",
                           _text("notes.txt", "hello")),
    "bundle a FIFO folder": (["serve", "--bundle", "{in}/b"], "is not a regular file",
                             lambda box, mp: (_folder("b")(box, mp), os.mkfifo(box.inputs / "b" / "meta.json"))),
    "server no port": (["device", "--bundle", "b", "--server", "nohost"], "HOST:PORT", None),
    "server port 99999": (["device", "--bundle", "b", "--server", "host:99999"], "HOST:PORT", None),
    "data missing": (["data", "--data", "{in}/none"], "does not exist", None),
    "data a text file": (["data", "--data", "{in}/notes.txt"], "is not a tar archive", _text("notes.txt", "hi")),
    "data a FIFO": (["data", "--data", "{in}/d.tar"], "is not a recognised dataset", _fifo("d.tar")),
    "data a folder of nothing": (["data", "--data", "{in}/d"], "is not a recognised dataset", _folder("d")),
    "COINFER_DATA missing": (["data"], "COINFER_DATA", _data_missing),
    "cache under a file": (["data"], "set COINFER_CACHE to a writable directory", _cache_under_a_file),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_command_line_is_one_line_and_exit_2(case: str, sandbox: Sandbox, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    argv, message, prepare = CASES[case]
    if prepare is not None:
        prepare(sandbox, monkeypatch)
    sandbox.freeze()
    status, err = run_main([a.replace("{in}", str(sandbox.inputs)) for a in argv], capsys)
    line = one_line(err)
    assert status == 2 and message in line, (status, line)


@pytest.mark.parametrize(("argv", "message", "prepare"), [
    (["profile", "--width", "inf"], "must be a finite number > 0", None),
    (["data", "--data", "{in}/d.tar.gz"], "not a readable tar archive",
     lambda box: (box.inputs / "d.tar.gz").write_bytes(b"\x1f\x8b" + b"not gzip" * 20)),
    (["import", "{in}/rows.json"], "not a regular file", lambda box: os.mkfifo(box.inputs / "rows.json")),
], ids=["argparse", "engine", "FIFO"])
def test_a_real_process_exits_2_with_one_line(argv: list[str], message: str, prepare: Callable | None,
                                              sandbox: Sandbox) -> None:
    if prepare is not None:
        prepare(sandbox)
    sandbox.freeze()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = run_process([a.replace("{in}", str(sandbox.inputs)) for a in argv], env, timeout=300)  # a busy machine
    assert run.returncode == 2 and message in one_line(run.stderr), run.stderr
