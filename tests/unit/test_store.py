"""The results store: round trips, replace by id, tidy table, concurrent and killed writers, bad files."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.config import SCHEMA_VERSION
from engine.errors import UserError
from engine.store import ResultsStore


def make_row(i: int, method: str = "quant", **extra: object) -> dict:
    return {
        "id": f"v{i:04d}",
        "method": method,
        "split": "layer2",
        "knobs": {"bits": 4 + i % 4, "clip": 0.5},
        "accuracy": 0.5 + i / 1000,
        "feature_shape": [32, 8, 8],
        **extra,
    }


def test_round_trip(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    row = make_row(1, device_flops=np.int64(12345), bits_actual=np.float32(0.9), note="hi", loss=float("nan"))
    row["feature_shape"] = (np.int64(32), 8, 8)
    store.put(row)
    got = store.get("v0001")
    assert got is not None
    assert got["knobs"] == {"bits": 5, "clip": 0.5}
    assert got["feature_shape"] == [32, 8, 8]
    assert got["device_flops"] == 12345 and type(got["device_flops"]) is int
    assert got["bits_actual"] == 0.9
    assert got["note"] == "hi" and got["loss"] is None
    assert got["schema_version"] == SCHEMA_VERSION
    assert got["created_at"].endswith("+00:00")
    assert store.get("missing") is None
    assert len(store) == 1 and "v0001" in store


def test_knob_pairs_and_validation(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    store.put({"id": "a", "method": "m", "split": "s", "knobs": (("bits", 8), ("mode", "uniform"))})
    assert store.get("a")["knobs"] == {"bits": 8, "mode": "uniform"}
    with pytest.raises(ValueError, match="method"):
        store.put({"id": "b", "split": "s"})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        store.put({"id": "b", "method": "m", "split": "s", "blob": object()})
    assert len(store) == 1


def test_replace_by_id_and_delete(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    store.put(make_row(1, dataset="d1"))
    store.put(make_row(2))
    store.put({**make_row(1), "accuracy": 0.99})
    assert len(store) == 2
    assert store.get("v0001")["accuracy"] == 0.99
    assert "dataset" not in store.get("v0001")  # the whole row is replaced, not merged
    assert store.delete("v0001") and not store.delete("v0001")
    assert [r["id"] for r in store.rows()] == ["v0002"]


def test_put_many_is_one_transaction(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    store.put_many(make_row(i) for i in range(5))
    assert len(store) == 5
    with pytest.raises(ValueError):
        store.put_many([make_row(10), {"id": "bad"}])  # validated before writing: nothing lands
    assert len(store) == 5


def test_table_columns_and_dtypes(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    empty = store.table()
    assert len(empty) == 0 and empty["accuracy"].dtype == "float64"
    store.put(make_row(1, seed=0, train_seconds=3))
    store.put(make_row(2, method="jpeg", extra_metric=1.5))
    store.put({"id": "v0003", "method": "jpeg", "split": "layer3", "knobs": {"quality": 90}, "accuracy": None})
    t = store.table()
    assert list(t["id"]) == ["v0001", "v0002", "v0003"]
    for col in ("id", "method", "split", "knobs", "accuracy", "feature_shape", "schema_version", "created_at"):
        assert col in t.columns
    assert {"knob_bits", "knob_clip", "knob_quality", "extra_metric"} <= set(t.columns)
    assert t["accuracy"].dtype == "float64" and np.isnan(t["accuracy"].iloc[2])
    assert t["train_seconds"].dtype == "float64"
    assert t["knob_bits"].dtype == "float64"  # missing for v0003
    assert t["knobs"].iloc[0] == {"bits": 5, "clip": 0.5}
    assert t["feature_shape"].iloc[0] == [32, 8, 8]
    assert t["knob_quality"].iloc[2] == 90
    assert list(store.table("jpeg")["id"]) == ["v0002", "v0003"]


def test_older_schema_rows_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    store = ResultsStore(path)
    store.put(make_row(1))
    old = {**make_row(2), "schema_version": 0, "created_at": "2020-01-01T00:00:00+00:00"}
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?)",
            (old["id"], old["method"], old["split"], old["created_at"], 0, json.dumps(old)),
        )
    conn.close()
    t = store.table()
    assert len(store) == 2
    assert dict(zip(t["id"], t["schema_version"], strict=True)) == {"v0002": 0, "v0001": SCHEMA_VERSION}
    assert store.get("v0002")["schema_version"] == 0


def test_exports_read_back(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.sqlite")
    store.put_many(make_row(i) for i in range(3))
    store.to_csv(tmp_path / "t.csv")
    back = pd.read_csv(tmp_path / "t.csv")
    assert list(back["id"]) == ["v0000", "v0001", "v0002"]
    assert json.loads(back["knobs"][1]) == {"bits": 5, "clip": 0.5}
    assert back["accuracy"].tolist() == pytest.approx([0.5, 0.501, 0.502])
    records = json.loads(store.to_json())
    assert [r["id"] for r in records] == ["v0000", "v0001", "v0002"]
    assert records[0]["knobs"] == {"bits": 4, "clip": 0.5} and records[0]["seed"] is None
    store.to_json(tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text()) == records


def test_default_path_follows_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))
    store = ResultsStore()
    assert store.path == tmp_path / "cache" / "results.sqlite" and store.path.exists()


def test_corrupt_file_raises_user_error(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    path.write_bytes(os.urandom(64) + b"not sqlite" * 200)
    with pytest.raises(UserError, match="not a SQLite database") as err:
        ResultsStore(path)
    assert "\n" not in str(err.value) and "delete it" in str(err.value)


def test_unwritable_directory_raises_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for path in (blocker / "results.sqlite", blocker / "sub" / "results.sqlite"):  # fails even for root
        with pytest.raises(UserError, match="cannot write the results store") as err:
            ResultsStore(path)
        assert "\n" not in str(err.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_directory_raises_user_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write the results store"):
            ResultsStore(ro / "results.sqlite")
    finally:
        ro.chmod(0o700)


def _write_many(path: str, start: int, n: int, go: mp.synchronize.Event) -> None:
    store = ResultsStore(Path(path))
    go.wait(30)
    for i in range(start, start + n):
        store.put(make_row(i, method=f"w{start}"))


def test_two_processes_writing_lose_no_row(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    ResultsStore(path)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_write_many, args=(str(path), start, 200, go)) for start in (0, 1000)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = ResultsStore(path)
    assert len(store) == 400
    assert set(store.table()["method"].value_counts().items()) == {("w0", 200), ("w1000", 200)}


def _hold_transaction(path: str, ready: mp.synchronize.Event) -> None:
    store = ResultsStore(Path(path))
    with store._connection() as conn:
        conn.execute("PRAGMA cache_size=5")  # spill uncommitted pages into the WAL before the kill
        conn.execute("BEGIN IMMEDIATE")
        ResultsStore._insert(conn, {**make_row(0), "accuracy": -1.0})  # would replace a committed row
        for i in range(100, 600):
            ResultsStore._insert(conn, make_row(i, payload="x" * 2000))
        ready.set()
        time.sleep(120)
        conn.execute("COMMIT")


def test_killed_writer_leaves_committed_rows(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    store = ResultsStore(path)
    store.put_many(make_row(i) for i in range(10))
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_transaction, args=(str(path), ready))
    proc.start()
    try:
        assert ready.wait(60), "writer never became ready"
        assert len(store) == 10  # readers don't see the open transaction
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    assert path.with_name(path.name + "-wal").stat().st_size > 500_000  # uncommitted pages did reach the disk
    store = ResultsStore(path)
    assert len(store) == 10
    assert sorted(store.table()["id"]) == [f"v{i:04d}" for i in range(10)]
    assert store.get("v0000")["accuracy"] == 0.5
    store.put(make_row(10))  # the lock went with the killed writer
    assert len(store) == 11
