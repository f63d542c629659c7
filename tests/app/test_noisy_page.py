"""AppTest of the noisy-channels page (Fig. 5): the figure shows the curves of the stored rows (separate coding with
its actual bitstream and its ideal length), the verdict says where JSCC wins and loses, the slider picks the best
scheme at a condition and the mismatch curve of its model; without rows the page names the command."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from synthetic import synthetic_rows
from test_pages import decoded, figures

from app.ui import Environment
from engine.data import ImageData
from engine.fig5 import SCHEMES, fig5_plan
from engine.profiles import PROFILES
from engine.store import ResultsStore

PAGE = str(Path(__file__).resolve().parents[2] / "app_pages" / "noisy.py")


def traces(fig: dict) -> dict[str, dict]:
    return {t["name"]: {k: decoded(v) if k in ("x", "y") else v for k, v in t.items()} for t in fig["data"]}


def run_page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["env"] = Environment(profile="smoke", width=0.125)
    return at.run()


def test_without_rows_the_page_names_the_command(fresh_cache: Path, small_data: ImageData) -> None:
    at = run_page()
    assert not at.exception
    assert "python -m engine noisy --profile smoke" in at.info[0].value
    assert not figures(at)


def test_the_slider_picks_the_best_scheme_and_its_mismatch_curve(fresh_cache: Path, small_data: ImageData) -> None:
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    ResultsStore(fresh_cache / "results.sqlite").put_many(synthetic_rows(base.id))
    at = run_page()
    assert not at.exception
    cost = traces(figures(at)[0])
    assert set(cost) == set(SCHEMES)
    assert cost["JSCC"]["x"] == [0.0, 10.0, 20.0]
    assert cost["JSCC"]["y"] == pytest.approx([32e-6, 8e-6, 2e-6])  # k / W at W = 1 MHz
    assert cost["PNG input"]["y"][1] == pytest.approx(18000 / (1e6 * math.log2(11)))
    assert cost["learned source coding (ideal)"]["y"][1] == pytest.approx(14 / (1e6 * math.log2(11)))
    assert cost["learned source coding (ideal)"]["line"]["dash"] == "dash"
    assert cost["learned source coding (actual)"]["line"]["dash"] == "dot"
    assert at.info[0].value.startswith("AWGN: JSCC is at or below every separate scheme, actual and ideal, at 20 dB")
    sentences = "\n".join(m.value for m in at.markdown)
    assert "- At 20 dB SNR, JSCC (2 complex channel uses: 2 µs) is cheaper than" in sentences
    assert "- At 10 dB SNR, JSCC (8 complex channel uses: 8 µs) costs more than" in sentences
    # the slider starts in the middle (10 dB): learned source coding sent at capacity is cheapest there
    assert at.select_slider[0].value == 10.0
    assert "learned source coding (actual)" in at.success[0].value and "24 source bits" in at.success[0].value
    mismatch = traces(figures(at)[1])["learned source coding (actual)"]
    assert mismatch["x"] == [10.0, 20.0] and mismatch["y"] == pytest.approx([0.80, 0.80])  # decodable at >= 10 dB

    at.select_slider[0].set_value(20.0).run()
    assert not at.exception
    assert "**JSCC** (2 complex channel uses)" in at.success[0].value and "80.00%" in at.success[0].value
    mismatch = traces(figures(at)[1])["JSCC"]
    assert mismatch["x"] == [0.0, 10.0, 20.0] and mismatch["y"] == pytest.approx([0.50, 0.78, 0.80])

    at.radio[0].set_value("bsc").run()
    assert not at.exception
    cost = traces(figures(at)[0])
    assert cost["JSCC"]["x"] == [0.01, 0.1] and cost["JSCC"]["y"] == [16, 64]
    assert at.info[0].value.startswith("BSC: JSCC is at or below the best actual bitstream but above the best ideal "
                                       "length at p = 0.01")
    at.select_slider[0].set_value(0.01).run()
    assert "**JSCC** (16 channel bits)" in at.success[0].value


def test_the_profiles_own_variants_by_default(fresh_cache: Path, small_data: ImageData) -> None:
    base = PROFILES.get("smoke").base_config(small_data.fingerprint)
    rows = synthetic_rows(base.id)
    planned = next(c for c in fig5_plan(base, "smoke") if c.knob("jscc_channel") == "awgn")
    awgn8 = next(r for r in rows if r["id"] == "awgn8")
    rows.append({**awgn8, "id": planned.id, "knobs": dict(planned.knobs)})  # measured as the smoke profile plans it
    ResultsStore(fresh_cache / "results.sqlite").put_many(rows)
    at = run_page()
    assert not at.exception
    only = at.toggle(key="noisy_plan_only")
    assert only.value and "also the 8 other Fig. 5 rows" in only.help
    cost = traces(figures(at)[0])
    assert set(cost) == {"JSCC", "PNG input"}  # the hand-made rows' ids are not the profile's
    uses = planned.knob("jscc_uses")  # the awgn8 row's accuracies under the planned k: cost k / W at 1 MHz
    assert cost["JSCC"]["x"] == [10.0, 20.0] and cost["JSCC"]["y"] == pytest.approx([uses / 1e6] * 2)
    only.set_value(False).run()
    assert set(traces(figures(at)[0])) == set(SCHEMES)
