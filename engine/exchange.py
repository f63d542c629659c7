"""Results files: rows of the results store with their provenance, in a versioned JSON document that travels to
another machine, and read back there as untrusted input (size capped before reading, JSON only, every row checked
by the store's own validation) to be merged into its store.

The document (README, "Results that travel"): `{"format": "coinfer-results", "version": 1, "exported_at",
"code_version", "torch_version", "machine": {...}, "rows": [...]}`; each row is a store row as `ResultsStore.rows`
returns it (its `trained_on`, `code_version`, `torch_version`, `measured_at`, `created_at` and `schema_version`
included) plus `measured_on`, the machine that measured it."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

import engine
from engine.config import SCHEMA_VERSION
from engine.errors import UserError
from engine.files import atomic_write, read_bounded
from engine.store import ResultsStore, normalise
from engine.untrusted import json_object

RESULTS_FORMAT = "coinfer-results"
RESULTS_VERSION = 1
MAX_RESULTS_BYTES = 64 << 20  # a quick sweep's rows take about 3 kB each
MAX_ROWS = 100_000
MAX_DEPTH = 4  # document -> rows -> row -> knobs -> a knob's list
MAX_TEXT = 10_000  # characters of one string
MAX_INT = 2**63 - 1
# Columns that say where and when a row was made, not what was measured: two machines give the same figures with other
# provenance. Wall times (`*_seconds`) differ between machines too and are no figures either.
PROVENANCE = frozenset({"created_at", "schema_version", "measured_at", "measured_on", "imported_from", "code_version",
                        "torch_version", "trained_on"})
_ID = re.compile(r"[0-9a-f]{6,64}")


# -- this machine -----------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict[str, Any]:
    """This machine, as a results file records it.

    Returns:
        `cpu` (model name), `cores`, `torch_threads`, `gpu` (its name, or None) and `platform`.
    """
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_model(), "cores": os.cpu_count() or 1, "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "platform": platform.platform(terse=True)}


def describe_machine(info: Mapping[str, Any]) -> str:
    """A machine in words: "Intel Xeon 8480, 16 cores, torch 2 threads (+ NVIDIA H100)".

    Args:
        info: a `machine()` dict (from this process or a results file).

    Returns:
        One line.
    """
    text = f"{info.get('cpu') or 'unknown CPU'}, {info.get('cores', '?')} cores, torch {info.get('torch_threads', '?')}"
    text += " threads"
    return text + (f" + {info['gpu']}" if info.get("gpu") else "")


# -- writing ----------------------------------------------------------------------------------------------------


def results_document(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The results file of `rows` (store rows): each keeps its own `measured_on` (a row imported earlier) or is
    marked as measured on this machine.

    Args:
        rows: rows as `ResultsStore.rows` returns them.

    Returns:
        The document, plain JSON.
    """
    here = machine()
    where = describe_machine(here)
    out = []
    for row in rows:
        stamps = {k: row[k] for k in ("created_at", "schema_version") if k in row}
        out.append({**normalise(row), **stamps, "measured_on": row.get("measured_on") or where})
    return {"format": RESULTS_FORMAT, "version": RESULTS_VERSION,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code_version": engine.__version__,
            "torch_version": str(torch.__version__), "machine": here, "rows": out}


def write_results(rows: Iterable[Mapping[str, Any]], path: Path | str) -> int:
    """Write the results file of `rows` to `path` (atomically).

    Args:
        rows: rows as `ResultsStore.rows` returns them.
        path: the file to write.

    Returns:
        The number of rows written.
    """
    doc = results_document(rows)
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    try:
        atomic_write(Path(path), lambda tmp: tmp.write_text(text))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return len(doc["rows"])


# -- reading ----------------------------------------------------------------------------------------------------


def _reject(message: str) -> UserError:
    return UserError(f"invalid results file: {message}")


def read_file(path: Path | str, max_bytes: int = MAX_RESULTS_BYTES) -> bytes:
    """The bytes of a results file, refused before reading when it is larger than `max_bytes` or not a regular file.

    Args:
        path: the file.
        max_bytes: the size cap.

    Returns:
        Its bytes.
    """
    return read_bounded(Path(path), max_bytes, _reject)


def _check_plain(value: Any, where: str) -> None:
    """Bounded plain JSON: depth at most MAX_DEPTH, strings at most MAX_TEXT characters, integers within 64 bits
    (walked without recursion)."""
    stack = [(value, where, 1)]
    while stack:
        v, at, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _reject(f"{at} is nested too deeply")
        if isinstance(v, str) and len(v) > MAX_TEXT:
            raise _reject(f"{at} is a string of {len(v):,} characters (at most {MAX_TEXT:,})")
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
            raise _reject(f"{at} is an integer beyond 64 bits")
        if isinstance(v, dict):
            stack += [(x, f"{at}.{str(k)[:40]}", depth + 1) for k, x in v.items()]
            if any(len(k) > 200 for k in v):
                raise _reject(f"{at} has a key longer than 200 characters")
        elif isinstance(v, list):
            stack += [(x, f"{at}[{i}]", depth + 1) for i, x in enumerate(v)]


def check_row(row: Any, where: str) -> dict[str, Any]:
    """One row of a results file, validated: the store's own validation (`engine.store.normalise`), a known method
    and split, an id of hex digits, and its `created_at` / `schema_version` stamps.

    Args:
        row: the row as read.
        where: how to name it in an error ("row 3").

    Returns:
        The row, plain JSON, its stamps kept.
    """
    from engine.methods import METHODS
    from engine.models import DEFAULT_MODEL, plausible_split

    if not isinstance(row, dict):
        raise _reject(f"{where} is not an object")
    try:
        clean = normalise(row)
    except (TypeError, ValueError) as exc:
        raise _reject(f"{where}: {str(exc).splitlines()[0][:300]}") from None
    ident = clean["id"]
    if not _ID.fullmatch(ident):
        raise _reject(f"{where}: id {ident[:80]!r} is not a variant id")
    if clean["method"] not in METHODS:
        raise _reject(f"row {ident}: unknown method {clean['method'][:80]!r}; known: {', '.join(METHODS)}")
    if not plausible_split(str(clean.get("model", DEFAULT_MODEL)), clean["split"]):
        raise _reject(f"row {ident}: unknown split {clean['split'][:80]!r}")
    version = row.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or not 0 <= version <= SCHEMA_VERSION:
        raise _reject(f"row {ident}: schema_version {version!r} is not one this coinfer reads (0-{SCHEMA_VERSION})")
    created = row.get("created_at")
    try:
        dt.datetime.fromisoformat(created) if created is not None else None
    except (TypeError, ValueError):
        raise _reject(f"row {ident}: created_at {str(created)[:40]!r} is not an ISO-8601 time") from None
    for key in ("measured_on", "imported_from", "trained_on", "base_id"):
        if clean.get(key) is not None and not isinstance(clean[key], str):
            raise _reject(f"row {ident}: {key} must be text")
    return {**clean, "schema_version": version, **({"created_at": created} if created is not None else {})}


def parse_results(raw: bytes, source: str, max_bytes: int = MAX_RESULTS_BYTES) -> list[dict[str, Any]]:
    """The rows of a results file read from untrusted bytes, ready to merge: each validated (`check_row`), marked
    with `measured_on` (its own, else the file's machine) and `imported_from` (the file and its export date).

    Args:
        raw: the file's bytes.
        source: the file's name, recorded in `imported_from`.
        max_bytes: the size cap.

    Returns:
        The rows.

    Raises:
        UserError: one line saying what is wrong, for anything else.
    """
    doc = json_object(bytes(raw), max_bytes, _reject, "give the .json file `results --export` wrote")
    if doc.get("format") != RESULTS_FORMAT:
        raise _reject(f"format is {str(doc.get('format'))[:80]!r}, expected {RESULTS_FORMAT!r}")
    version = doc.get("version")
    if type(version) is not int or version != RESULTS_VERSION:
        raise _reject(f"version {str(version)[:20]} is not supported (this coinfer reads version {RESULTS_VERSION})")
    rows, info = doc.get("rows"), doc.get("machine")
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        raise _reject(f"'rows' must be a list of at most {MAX_ROWS:,} rows")
    if not isinstance(info, dict):
        raise _reject("'machine' must be an object")
    _check_plain({k: v for k, v in doc.items() if k != "rows"}, "document")
    for i, row in enumerate(rows):
        _check_plain(row, f"row {i + 1}")
    where = describe_machine(info)[:MAX_TEXT]
    origin = f"{Path(source).name[:200]}, exported {str(doc.get('exported_at', '?'))[:40]}"
    checked = [check_row(row, f"row {i + 1}") for i, row in enumerate(rows)]
    return [{**r, "measured_on": r.get("measured_on") or where, "imported_from": origin} for r in checked]


# -- merging ----------------------------------------------------------------------------------------------------


def figures(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a row measured: every column but its provenance and wall times.

    Args:
        row: a results row.

    Returns:
        The columns two rows of the same variant must agree on.
    """
    return {k: v for k, v in row.items() if k not in PROVENANCE and not k.endswith("_seconds")}


def same_figures(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two rows measured the same figures (`figures`), compared as stored JSON.

    Args:
        a: a results row.
        b: another.

    Returns:
        True when they agree.
    """
    return normalise(figures(a)) == normalise(figures(b))


def import_rows(rows: list[dict[str, Any]], store: ResultsStore) -> tuple[int, int]:
    """Merge validated rows into `store`, all or nothing: a row stored with the same figures is skipped, a row whose
    id is stored with other figures refuses the whole import.

    Args:
        rows: rows from `parse_results`.
        store: the local results store.

    Returns:
        The numbers of rows added and skipped.
    """
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        first = seen.setdefault(row["id"], row)
        if first is not row and not same_figures(first, row):
            raise UserError(f"row {row['id']} appears twice in the file with other figures: nothing was imported")
    return store.merge(list(seen.values()), same_figures,
                       lambda ident: UserError(f"row {ident} is stored here with other figures: nothing was imported "
                                               f"(delete or re-measure it first)"))


# -- the example results ----------------------------------------------------------------------------------------

EXAMPLES_DIR = Path(engine.__file__).resolve().parents[1] / "examples"
# the profiles whose rows ship with the project, measured on its reference machine (README, "Example results")
EXAMPLE_FILES = {"quick": "quick-results.json", "paper-cpu": "paper-cpu-results.json"}
EXAMPLE_MARK = "example results"  # leads the `imported_from` of rows loaded from an example file


def example_file(profile: str) -> Path | None:
    """The example results file of `profile`, or None where the project ships none for it."""
    name = EXAMPLE_FILES.get(profile)
    return EXAMPLES_DIR / name if name is not None and (EXAMPLES_DIR / name).is_file() else None


def example_profiles() -> list[str]:
    """The profiles whose example results ship with this copy of the project (their file is present)."""
    return [p for p in EXAMPLE_FILES if example_file(p) is not None]


def load_examples(store: ResultsStore, path: Path | str) -> tuple[int, int]:
    """Merge shipped example results (a profile measured on the project's reference machine, `example_file`) into
    `store`, each row's `imported_from` starting with EXAMPLE_MARK so that every page can say so.

    Args:
        store: the local results store.
        path: the examples file.

    Returns:
        The numbers of rows added and skipped (`import_rows`).
    """
    path = Path(path)
    rows = parse_results(read_file(path), path.name)
    return import_rows([{**r, "imported_from": f"{EXAMPLE_MARK}: {r['imported_from']}"} for r in rows], store)


def examples(table: Any) -> Any:
    """The rows of a results table loaded from the example results (`load_examples`).

    Args:
        table: a tidy results table.

    Returns:
        Its example rows.
    """
    rows = imported(table)
    if rows.empty:  # no imported rows: the table may not have the column at all
        return rows
    return rows[rows["imported_from"].astype(str).str.startswith(EXAMPLE_MARK)]


# -- measuring again here ---------------------------------------------------------------------------------------


def imported(table: Any) -> Any:
    """The imported rows of a results table (those with an `imported_from`).

    Args:
        table: a tidy results table (`ResultsStore.table`).

    Returns:
        Its rows that came from a results file.
    """
    if "imported_from" not in table:
        return table.iloc[0:0]
    return table[table["imported_from"].notna()]


def remeasure_specs(rows: Iterable[Mapping[str, Any]], data: str | None) -> tuple[list[Any], list[str]]:
    """Jobs that measure rows again on this machine (a worker's row then replaces the imported one).

    Args:
        rows: results rows (dicts or table rows).
        data: the dataset path the jobs read (None: the default lookup).

    Returns:
        The job specs, and the ids of rows that no profile here can rebuild.
    """
    from engine.deploy.selection import row_config
    from engine.profiles import recipe_of
    from engine.queue import JobSpec

    specs, refused = [], []
    for row in rows:
        try:
            cfg = row_config(row)
        except (UserError, KeyError, TypeError, ValueError):
            refused.append(str(row.get("id")))
            continue
        profile = recipe_of(cfg.base)
        if profile is None:
            refused.append(cfg.id)
            continue
        specs.append(JobSpec.for_variant(cfg, profile, data))
    return specs, refused
