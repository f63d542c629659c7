"""Where the engine keeps its cache: `cache/` in the project, or `$COINFER_CACHE`."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    return Path(os.environ.get("COINFER_CACHE", PROJECT_ROOT / "cache"))
