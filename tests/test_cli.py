"""The command line: each command runs on the smoke profile; user mistakes print one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.__main__ import main


@pytest.fixture()
def cli_env(shared_tar: Path, tmp_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cifar) -> Path:
    """A fresh results store and model cache, with the decoded dataset reused from the session cache."""
    cache = tmp_path / "cache"
    (cache / "data").mkdir(parents=True)
    for f in (tmp_cache / "data").glob("dataset-*.pt"):
        (cache / "data" / f.name).symlink_to(f)
    monkeypatch.setenv("COINFER_CACHE", str(cache))
    monkeypatch.setenv("COINFER_DATA", str(shared_tar))
    return cache


def test_data_and_profile(cli_env: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "1200 / 400 images, 3x32x32, 10 classes" in out
    assert main(["profile", "--profile", "smoke", "--width", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "conv4_x" in out and "1110.85" in out  # device MFLOPs of the whole width-1.0 model at device_only


def test_run_original_then_results(cli_env: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "original", "--profile", "smoke", "--split", "conv4_x", "--split", "server_only"]) == 0
    capsys.readouterr()
    assert main(["results", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["split"] for r in rows) == ["conv4_x", "server_only"]
    assert main(["results", "--csv"]) == 0
    assert capsys.readouterr().out.startswith("id,method,split")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "original", "--profile", "smoke", "--split", "conv9_x"], "unknown split point 'conv9_x'"),
        (["run", "nonsense", "--profile", "smoke"], "unknown method 'nonsense'"),
        (["profile", "--profile", "huge"], "unknown profile 'huge'"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(cli_env: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                            message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_width_must_be_positive(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--width", "0"])
    assert exc.value.code == 2
    assert "must be > 0" in capsys.readouterr().err


def test_missing_and_corrupt_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COINFER_DATA", str(tmp_path / "nowhere"))
    assert main(["data"]) == 2
    assert "nowhere" in capsys.readouterr().err
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar at all")
    assert main(["data", "--data", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_unwritable_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("COINFER_CACHE", str(blocker / "cache"))
    assert main(["data"]) == 2
    assert "set COINFER_CACHE to a writable directory" in capsys.readouterr().err
