"""The results store: one row per profiled variant (the lookup table the explorer reads), kept in SQLite.

Each row is a flat dict stored whole as JSON, next to indexed columns (id, method, split, created_at,
schema_version). WAL mode, a busy timeout and one `BEGIN IMMEDIATE` transaction per write make it safe for
several processes at once: a killed writer leaves the last committed table, and concurrent writers lose no row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import IO, Any

import numpy as np
import pandas as pd

from engine import sqlite
from engine.config import SCHEMA_VERSION
from engine.errors import UserError
from engine.paths import cache_dir

REQUIRED = ("id", "method", "split")
FLOAT_COLUMNS = (
    "width",
    "accuracy",
    "device_flops",
    "device_params_bytes",
    "device_activation_bytes",
    "device_memory_bytes",
    "device_rss_torchscript_bytes",
    "device_rss_onnx_bytes",
    "server_flops",
    "bits_actual",
    "bits_ideal",
    "bits_raw",
    "png_bits",
    "train_seconds",
)
INT_COLUMNS = ("seed", "schema_version")
# Columns of the tidy table, in order; `knob_<name>` columns follow the common ones, then any extra keys.
COMMON = (
    *REQUIRED,
    "knobs",
    "dataset",
    *FLOAT_COLUMNS,
    "feature_shape",
    "seed",
    "trained_on",
    "code_version",
    "base_id",
    "schema_version",
    "created_at",
)
_COLUMNS = {"id", "method", "split", "created_at", "schema_version", "row"}
_DDL = """
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    split TEXT NOT NULL,
    created_at TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    row TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_method ON results (method);
CREATE INDEX IF NOT EXISTS results_schema ON results (schema_version);
"""


def default_path() -> Path:
    return cache_dir() / "results.sqlite"


def jsonable(value: Any, where: str = "row") -> Any:
    """`value` as plain JSON types: numpy/torch scalars and arrays become numbers and lists, tuples lists,
    paths strings, datetimes ISO-8601; NaN and infinities become None. Anything else raises TypeError."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string")
            out[k] = jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        return jsonable(float(str(value)), where)  # float32 0.9 -> 0.9, not 0.8999999761581421
    if isinstance(value, np.ndarray) and value.ndim > 0 and value.dtype.kind == "f":
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), where)
    if hasattr(value, "tolist") and not isinstance(value, (bytes, bytearray)):  # numpy / torch
        return jsonable(value.tolist(), where)
    raise TypeError(f"{where}: {type(value).__name__} value {value!r} is not JSON-serialisable")


def normalise(row: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a row and return it as plain JSON types, without `schema_version` / `created_at` stamps."""
    if not isinstance(row, Mapping):
        raise TypeError(f"a result row is a dict, got {type(row).__name__}")
    missing = [k for k in REQUIRED if not isinstance(row.get(k), str) or not row.get(k)]
    if missing:
        raise ValueError(f"result row needs non-empty string {', '.join(missing)}; got keys {sorted(row)}")
    out = jsonable(dict(row))
    knobs = row.get("knobs")
    if knobs is not None:
        if not isinstance(knobs, Mapping):  # e.g. VariantConfig.knobs: a tuple of (name, value) pairs
            try:
                knobs = dict(knobs)
            except (TypeError, ValueError):
                raise TypeError(f"row {row['id']}: knobs must be a dict or (name, value) pairs") from None
        out["knobs"] = jsonable(knobs, "knobs")
    out.pop("schema_version", None)
    out.pop("created_at", None)
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class ResultsStore:
    """SQLite-backed table of profiled variants, keyed by variant config id; `put` replaces a row by id."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._unwritable(e.strerror or type(e).__name__) from None
        with self._connection() as conn:
            sqlite.create(conn, _DDL)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(results)")}
        if not columns >= _COLUMNS:
            raise UserError(
                f"results store {self.path} holds a different 'results' table: move it away or delete it; "
                "it will be rebuilt"
            )

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    # -- connections and errors -------------------------------------------------------------------------

    def _unwritable(self, reason: str) -> UserError:
        return UserError(
            f"cannot write the results store {self.path} ({reason}): make its directory writable "
            "or set COINFER_CACHE to a writable directory"
        )

    def _translate(self, e: sqlite3.Error) -> UserError | None:
        msg = str(e).lower()
        if "not a database" in msg or "malformed" in msg or "encrypted" in msg:
            return UserError(
                f"results store {self.path} is not a SQLite database: move it away or delete it; it will be rebuilt"
            )
        if "locked" in msg or "busy" in msg:
            return UserError(
                f"results store {self.path} stayed locked by another process for {sqlite.BUSY_TIMEOUT_S:g} s: "
                "let it finish, then retry"
            )
        if "unable to open" in msg or "readonly" in msg or "read-only" in msg or "disk i/o" in msg:
            return self._unwritable(str(e))
        if "disk is full" in msg or "database or disk is full" in msg:
            return UserError(f"no space left for the results store {self.path}: free some disk space and retry")
        return None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A fresh autocommit connection (engine.sqlite.connect); sqlite errors become UserErrors."""
        try:
            with sqlite.connect(self.path) as conn:
                yield conn
        except sqlite3.Error as e:
            err = self._translate(e)
            if err is None:
                raise
            raise err from e

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (engine.sqlite.transaction): commits at the end, rolls back on any error."""
        with self._connection() as conn, sqlite.transaction(conn):
            yield conn

    @staticmethod
    def _insert(conn: sqlite3.Connection, row: dict[str, Any], created_at: str | None = None,
                schema_version: int = SCHEMA_VERSION) -> None:
        """Insert or replace one normalised row, stamping `schema_version` and `created_at` (default: now)."""
        stamped = {**row, "schema_version": schema_version, "created_at": created_at or _now()}
        conn.execute(
            "INSERT OR REPLACE INTO results (id, method, split, created_at, schema_version, row) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                row["id"],
                row["method"],
                row["split"],
                stamped["created_at"],
                schema_version,
                json.dumps(stamped, allow_nan=False, separators=(",", ":")),
            ),
        )

    @staticmethod
    def _decode(text: str, created_at: str, schema_version: int) -> dict[str, Any]:
        row = json.loads(text)
        row["created_at"] = created_at
        row["schema_version"] = schema_version
        return row

    # -- writing -------------------------------------------------------------------------------------

    def put(self, row: Mapping[str, Any]) -> None:
        """Insert a row, replacing any earlier row with the same id.

        Args:
            row: a results row (`id`, `method`, `split` and the measured columns); it is validated first.
        """
        clean = normalise(row)
        with self._transaction() as conn:
            self._insert(conn, clean)

    def update(self, id: str, values: Mapping[str, Any]) -> None:
        """Add or change figures of a stored row (a measurement made after it), keeping when it was measured.

        Args:
            id: the row's id.
            values: the columns to set.
        """
        with self._transaction() as conn:
            found = conn.execute("SELECT row, created_at, schema_version FROM results WHERE id = ?", (id,)).fetchone()
            if found is None:
                raise UserError(f"no row {id} in the results store; see `python -m engine results`")
            row = self._decode(*found)
            self._insert(conn, normalise({**row, **values}), row["created_at"], row["schema_version"])

    def put_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Insert or replace several rows in one transaction: all of them are written, or none.

        Args:
            rows: results rows, as for `put`.
        """
        clean = [normalise(r) for r in rows]
        if not clean:
            return
        with self._transaction() as conn:
            for r in clean:
                self._insert(conn, r)

    def merge(self, rows: Iterable[Mapping[str, Any]], same: Callable[[dict[str, Any], dict[str, Any]], bool],
              conflict: Callable[[str], Exception]) -> tuple[int, int]:
        """Add rows made elsewhere, keeping their `created_at` and `schema_version`, in one transaction: a row whose id
        is stored already is skipped when `same(stored, row)`, else `conflict(id)` is raised and nothing is written.

        Args:
            rows: results rows, as for `put`, with their stamps.
            same: whether a stored row and a new one of the same id agree.
            conflict: the error to raise for an id stored with other figures.

        Returns:
            The numbers of rows added and skipped.
        """
        added = skipped = 0
        with self._transaction() as conn:
            for row in rows:
                hit = conn.execute("SELECT row, created_at, schema_version FROM results WHERE id = ?",
                                   (row["id"],)).fetchone()
                if hit is not None:
                    if not same(self._decode(*hit), dict(row)):
                        raise conflict(row["id"])
                    skipped += 1
                    continue
                self._insert(conn, normalise(row), row.get("created_at"), row.get("schema_version", SCHEMA_VERSION))
                added += 1
        return added, skipped

    def delete(self, id: str) -> bool:
        """Remove the row with this id.

        Args:
            id: a variant config id.
        Returns:
            True if there was one.
        """
        with self._transaction() as conn:
            return conn.execute("DELETE FROM results WHERE id = ?", (id,)).rowcount > 0

    # -- reading -------------------------------------------------------------------------------------

    def get(self, id: str) -> dict[str, Any] | None:
        """The row of one variant.

        Args:
            id: a variant config id.
        Returns:
            the row with its `created_at` and `schema_version`, or None when it is not stored.
        """
        with self._connection() as conn:
            hit = conn.execute("SELECT row, created_at, schema_version FROM results WHERE id = ?", (id,)).fetchone()
        return None if hit is None else self._decode(*hit)

    def __contains__(self, id: object) -> bool:
        if not isinstance(id, str):
            return False
        with self._connection() as conn:
            return conn.execute("SELECT 1 FROM results WHERE id = ?", (id,)).fetchone() is not None

    def __len__(self) -> int:
        with self._connection() as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def rows(self, method: str | None = None) -> list[dict[str, Any]]:
        """All rows (of one method, if given), oldest first; rows of any schema_version are included.

        Args:
            method: a method name, or None for every method.
        Returns:
            the rows as plain dicts.
        """
        sql = "SELECT row, created_at, schema_version FROM results"
        args: tuple[str, ...] = ()
        if method is not None:
            sql, args = sql + " WHERE method = ?", (method,)
        with self._connection() as conn:
            hits = conn.execute(sql + " ORDER BY created_at, id", args).fetchall()
        return [self._decode(*h) for h in hits]

    def table(self, method: str | None = None) -> pd.DataFrame:
        """Tidy table, one row per variant: the common columns, `knobs` (a dict) plus one `knob_<name>` column
        per knob, then any other keys. Measured quantities are float (NaN when missing), seed is Int64.

        Args:
            method: a method name, or None for every method.
        Returns:
            the table (empty, with the common columns, when nothing is stored).
        """
        return rows_to_frame(self.rows(method))

    # -- export --------------------------------------------------------------------------------------

    def to_csv(self, path_or_buf: str | Path | IO[str] | None = None, method: str | None = None) -> str | None:
        """The tidy table as CSV (`frame_to_csv`)."""
        return frame_to_csv(self.table(method), path_or_buf)

    def to_json(
        self, path_or_buf: str | Path | IO[str] | None = None, method: str | None = None, indent: int | None = None
    ) -> str | None:
        """The tidy table as JSON records (`frame_to_json`)."""
        return frame_to_json(self.table(method), path_or_buf, indent)


def frame_to_csv(frame: pd.DataFrame, path_or_buf: str | Path | IO[str] | None = None) -> str | None:
    """A tidy table as CSV; `knobs`, `feature_shape` and other nested values are written as JSON."""
    frame = frame.copy()
    for col in frame.columns:
        if frame[col].dtype == object and frame[col].map(lambda v: isinstance(v, (dict, list))).any():
            frame[col] = frame[col].map(lambda v: json.dumps(v) if isinstance(v, (dict, list)) else v)
    return frame.to_csv(path_or_buf, index=False)


def frame_to_json(frame: pd.DataFrame, path_or_buf: str | Path | IO[str] | None = None,
                  indent: int | None = None) -> str | None:
    """A tidy table as a JSON list of records (missing values as null); returns the text if no target."""
    records = [{k: _plain(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]
    text = json.dumps(records, indent=indent, allow_nan=False)
    if path_or_buf is None:
        return text
    if isinstance(path_or_buf, (str, PurePath)):
        Path(path_or_buf).write_text(text + "\n")
    else:
        path_or_buf.write(text)
    return None


def _plain(v: Any) -> Any:
    """A table cell as a JSON value: pandas missing markers become None."""
    if isinstance(v, (dict, list)):
        return v
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return jsonable(v)


def rows_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as the tidy table (see `ResultsStore.table`)."""
    knob_names: list[str] = []
    extra: list[str] = []
    for r in rows:
        for k in r.get("knobs") or {}:
            if k not in knob_names:
                knob_names.append(k)
        for k in r:
            if k not in COMMON and k not in extra:
                extra.append(k)
    knob_cols = [f"knob_{k}" for k in sorted(knob_names)]
    extra = [k for k in sorted(extra) if k not in knob_cols]
    columns = [*COMMON, *knob_cols, *extra]
    data = {c: [] for c in columns}
    for r in rows:
        knobs = r.get("knobs") or {}
        for c in columns:
            if c in knob_cols:
                data[c].append(knobs.get(c[5:]))
            else:
                data[c].append(r.get(c))
    frame = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in data.items()}, columns=columns)
    for c in FLOAT_COLUMNS:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    for c in INT_COLUMNS:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("Int64")
    for c in [*knob_cols, *extra]:
        frame[c] = _infer(frame[c])
    return frame


def _infer(col: pd.Series) -> pd.Series:
    """Numeric columns (ints, floats, bools with missing values) become float/bool; everything else stays object."""
    values = [v for v in col if v is not None]
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pd.to_numeric(col, errors="coerce").astype(
            "float64" if len(values) < len(col) or any(isinstance(v, float) for v in values) else "int64"
        )
    if values and len(values) == len(col) and all(isinstance(v, bool) for v in values):
        return col.astype(bool)
    return col
