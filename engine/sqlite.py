"""SQLite connections as the job queue and the results store open them: a fresh autocommit connection per use (safe
across threads and processes), one busy timeout, WAL mode, and write transactions that take the write lock at once
(`BEGIN IMMEDIATE`), so that read-then-write steps are atomic across processes."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

# How long a connection waits for another process's write lock before raising "database is locked". Writes are
# short (one row, one job update), so a wait this long means a stuck writer; yet several workers and a dashboard
# writing at the end of a sweep's jobs queue behind each other well within it.
BUSY_TIMEOUT_S = 30.0
# SQLITE_PROTOCOL ("locking protocol"): in WAL mode, a race on the shared-memory index that SQLite gives up on after
# its own retries when processes open and close connections at a high rate (seen once in a 2-worker sweep). It
# holds no lock and changes nothing, so opening the connection again is safe.
SQLITE_PROTOCOL = 15
OPEN_ATTEMPTS = 8


@contextlib.contextmanager
def connect(path: Path | str, *, rows: bool = False) -> Iterator[sqlite3.Connection]:
    """A fresh autocommit connection, closed at the end of the block.

    Args:
        path: the database file.
        rows: return rows as `sqlite3.Row` (by name) instead of tuples.

    Returns:
        A context manager giving the connection; an error inside the block rolls back an open transaction.
    """
    conn = _open(path)
    try:
        if rows:
            conn.row_factory = sqlite3.Row
        yield conn
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def _open(path: Path | str) -> sqlite3.Connection:
    """A connection with its busy timeout and synchronous mode set, opened again on a transient SQLITE_PROTOCOL."""
    for attempt in range(OPEN_ATTEMPTS):
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: durable against a killed process
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            if getattr(exc, "sqlite_errorcode", None) != SQLITE_PROTOCOL or attempt == OPEN_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * 2**attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on `conn`: the write lock is taken at once (waiting up to the busy timeout), committed
    at the end of the block, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def create(conn: sqlite3.Connection, ddl: str) -> None:
    """Switch the database to WAL mode and run the `;`-separated statements of `ddl` in one transaction."""
    conn.execute("PRAGMA journal_mode=WAL")
    with transaction(conn):
        for stmt in filter(str.strip, ddl.split(";")):
            conn.execute(stmt)


def add_columns(conn: sqlite3.Connection, table: str, columns: tuple[tuple[str, str], ...]) -> None:
    """Add the `(name, type)` columns a table of an earlier release lacks (nullable, so its rows stay valid)."""
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}
    missing = [(n, t) for n, t in columns if n not in have]
    if missing:
        with transaction(conn):
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}  # another process's add
            for name, kind in missing:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
