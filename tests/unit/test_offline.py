"""The dashboard runs offline: no page names an icon that Streamlit fetches from a font server, and requirements.txt
pins nothing the code does not import."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _dashboard_sources() -> list[Path]:
    return [ROOT / "dashboard.py", *sorted((ROOT / "app").glob("*.py")), *sorted((ROOT / "app_pages").glob("*.py"))]


def test_no_material_icons() -> None:
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in _dashboard_sources()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if ":material/" in line]
    assert offenders == [], "Material icons are fetched from a font server; use emoji or text"


def test_joblib_is_neither_pinned_nor_imported() -> None:
    assert not re.search(r"^joblib\b", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    sources = [*ROOT.glob("engine/**/*.py"), *_dashboard_sources(), *ROOT.glob("bench/*.py")]
    assert not [p for p in sources if re.search(r"^\s*(import|from) joblib\b", p.read_text(), re.MULTILINE)]
