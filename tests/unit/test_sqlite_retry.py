"""Opening a connection survives a transient SQLITE_PROTOCOL and gives up on anything else."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import engine.sqlite as sq


class _Flaky:
    """A connection whose first statement fails with the given SQLite error code."""

    def __init__(self, conn: sqlite3.Connection, code: int) -> None:
        self.conn, self.code = conn, code

    def execute(self, sql: str) -> None:
        exc = sqlite3.OperationalError("locking protocol" if self.code == sq.SQLITE_PROTOCOL else "disk I/O error")
        exc.sqlite_errorcode = self.code
        raise exc

    def close(self) -> None:
        self.conn.close()


@pytest.mark.parametrize("code", [sq.SQLITE_PROTOCOL, 10])
def test_a_transient_locking_protocol_error_opens_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       code: int) -> None:
    real, calls = sqlite3.connect, []

    def connect(*args: object, **kwargs: object) -> object:
        calls.append(1)
        conn = real(*args, **kwargs)
        return _Flaky(conn, code) if len(calls) == 1 else conn

    monkeypatch.setattr(sq.sqlite3, "connect", connect)
    monkeypatch.setattr(sq.time, "sleep", lambda s: None)
    if code != sq.SQLITE_PROTOCOL:
        with pytest.raises(sqlite3.OperationalError, match="disk I/O"), sq.connect(tmp_path / "x.db"):
            pass
        assert len(calls) == 1
        return
    with sq.connect(tmp_path / "x.db") as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL, set on the second opening
    assert len(calls) == 2
