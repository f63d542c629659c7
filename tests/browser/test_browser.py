"""Real-browser tests: the dashboard served by Streamlit, driven by Playwright in Debian's chromium
(/usr/bin/chromium). Every page is opened through the sidebar's navigation (the view state must survive it), the
link-rate slider moved, a point clicked where the page has a chart, and a screenshot saved per page under
test-output/screenshots/."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import measured_original

from engine.data import ImageData

pytestmark = pytest.mark.browser
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("COINFER_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = PROJECT_ROOT / "test-output" / "screenshots"
# (page file, navigation title, page heading, has a chart of clickable points with smoke `original` rows)
PAGES = [
    ("plane", "Trade-off plane", "Communication-computation plane", True),
    ("latency", "Latency vs rate", "Latency vs link rate", True),
    ("noisy", "Noisy channels", "Noisy channels", False),
    ("live", "Live", "Live co-inference", False),
    ("compare", "Compare", "Compare variants", True),
    ("search", "Search", "Search", False),
    ("jobs", "Jobs", "Jobs", False),
    ("export", "Export / import", "Export and import", False),
]
playwright_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tmp_cache: Path, shared_tar: Path,
           small_data: ImageData) -> Iterator[str]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    cache = measured_original(tmp_path_factory.mktemp("browser"), tmp_cache, small_data)
    port = _free_port()
    env = {**os.environ, "COINFER_CACHE": str(cache), "COINFER_DATA": str(shared_tar)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def _href(page) -> str:  # noqa: ANN001 - a playwright Page
    return page.evaluate("location.href")  # page.url lags behind Streamlit's history.replaceState


def _wait_href(page, part: str, present: bool = True) -> None:  # noqa: ANN001
    page.wait_for_function("([p, yes]) => location.href.includes(p) === yes", arg=[part, present], timeout=60_000)


def _rate_slider(page):  # noqa: ANN001, ANN202
    """The link-rate slider's range input (in the sidebar; on the latency page, above its chart)."""
    return page.locator('input[type="range"][aria-label="Link rate"]')


def _move_rate(page) -> str:  # noqa: ANN001
    """Press → on the link-rate slider; returns the new rate_kBps once the URL shows it."""
    before = dict(p.split("=", 1) for p in _href(page).split("?", 1)[1].split("&"))["rate_kBps"]
    slider = _rate_slider(page)
    playwright_api.expect(slider).to_have_count(1, timeout=60_000)  # a page switch may briefly show the old sidebar
    slider.focus()
    page.keyboard.press("ArrowRight")
    _wait_href(page, f"rate_kBps={before}&", present=False)
    return dict(p.split("=", 1) for p in _href(page).split("?", 1)[1].split("&"))["rate_kBps"]


def _settle(page) -> None:  # noqa: ANN001
    """Wait until Streamlit's "running" indicator is gone (the script run and its redraw are over)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)


def _click_point(page, chart: int = 0) -> None:  # noqa: ANN001
    """Click drawn points of a plotly chart (the pointer, as a person would) until the URL names a newly selected
    variant."""
    plot = page.locator(".js-plotly-plot").nth(chart)
    for _ in range(10):  # a rerun may replace the chart while we scroll to it: settle, then try again
        _settle(page)
        try:
            plot.scroll_into_view_if_needed(timeout=10_000)
            break
        except playwright_api.Error:
            time.sleep(1)
    points = plot.locator(".scatterlayer .trace .points path")
    assert points.count() > 0
    before = _href(page)
    for attempt in range(6):
        n = points.count()
        box = points.nth((n // 2 + attempt) % max(n, 1)).bounding_box() if n else None
        if box is None:  # the chart is being redrawn
            time.sleep(1)
            continue
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        try:
            page.wait_for_function("old => location.href !== old && location.href.includes('sel=')", arg=before,
                                   timeout=20_000)
            return
        except playwright_api.TimeoutError:
            continue  # that point was the selected one already
    raise AssertionError("clicking points selected no variant")


def _screenshot(page, name: str) -> None:  # noqa: ANN001
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_every_page_keeps_the_view_and_reacts(server: str, browser, tmp_path: Path) -> None:  # noqa: ANN001
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _every_page(server, page, tmp_path)
    except Exception:
        _screenshot(page, "failure")  # what the page showed when the test gave up
        raise
    finally:
        page.close()


def _open_page(page, title: str, heading: str) -> None:  # noqa: ANN001
    """Click a page's navigation link until its heading shows: a click that lands while the previous page's rerun
    (after a point was selected) is still being applied can be dropped on a loaded machine; a person clicks again."""
    for attempt in range(3):
        page.get_by_role("link", name=title).click()
        try:
            page.get_by_role("heading", name=heading).first.wait_for(timeout=30_000 * (attempt + 1))
            return
        except playwright_api.Error:
            if attempt == 2:
                raise


def _every_page(server: str, page, tmp_path: Path) -> None:  # noqa: ANN001
    # the server's first request is a deep link: the page must run inside the dashboard, sidebar and all
    page.goto(f"{server}/latency?profile=smoke&width=0.125")
    page.get_by_role("heading", name="Latency vs link rate").first.wait_for(timeout=90_000)
    page.get_by_text("Edge environment").first.wait_for(timeout=30_000)
    page.goto(f"{server}/?profile=smoke&width=0.125&rate_kBps=10&drop=3")
    page.wait_for_selector(".js-plotly-plot", timeout=90_000)
    _wait_href(page, "page=plane")
    # the plane: measured points, and the ideal-bits toggle switches the y axis
    assert page.locator(".js-plotly-plot .scatterlayer .trace .points path").count() >= 5
    assert page.locator(".js-plotly-plot .g-ytitle").first.text_content() == "bits per image (actual bitstream)"
    page.get_by_text("Ideal bits").first.click()
    page.locator(".js-plotly-plot .g-ytitle", has_text="bits per image (ideal)").wait_for(timeout=60_000)
    _wait_href(page, "bits=ideal")
    for name, title, heading, clickable in PAGES:
        if not (PROJECT_ROOT / "app_pages" / f"{name}.py").exists():
            continue
        if name != "plane":
            _open_page(page, title, heading)
        elif heading:
            page.get_by_role("heading", name=heading).first.wait_for(timeout=90_000)
        # the view survived the page switch: still the smoke profile, the chosen rate and accuracy drop
        for part in ("profile=smoke", "width=0.125", "drop=3", "bits=ideal"):
            _wait_href(page, part)
        if name == "latency":  # mark the chart, to see that the rate change updates it in place
            page.wait_for_selector(".js-plotly-plot", timeout=60_000)
            page.evaluate("() => { document.querySelector('.js-plotly-plot').dataset.mark = 'before'; }")
        rate = _move_rate(page)
        if name == "compare":
            page.get_by_role("button", name="Pin the baselines (server only, device only)").click()
            page.wait_for_selector(".js-plotly-plot", timeout=60_000)
            _wait_href(page, "pins=")
        if name == "latency":
            label = page.locator(".js-plotly-plot .annotation-text").first
            playwright_api.expect(label).to_have_text(f"{float(rate):,.3g} kB/s", timeout=60_000)
            assert page.evaluate("() => document.querySelector('.js-plotly-plot').dataset.mark") == "before"
        if clickable:
            page.wait_for_selector(".js-plotly-plot", timeout=60_000)
            _click_point(page)
            if name == "latency":
                page.get_by_text("Selected:").first.wait_for(timeout=60_000)
        if name == "export":
            hostile = tmp_path / "hostile.json"
            hostile.write_text(json.dumps({"format": "coinfer-selection", "version": 1, "config": {
                "method": "__import__('os').system('true')", "split": "stem", "knobs": {}, "base": {}}}))
            selection_upload = page.get_by_role("region", name="Selection JSON exported by")  # not the results one
            selection_upload.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(hostile))
            page.get_by_text("invalid selection file").first.wait_for(timeout=60_000)
            assert "nothing was changed" in page.get_by_text("invalid selection file").first.text_content()
        _screenshot(page, name)
    # a reload reopens the same view
    href = _href(page)
    page.reload()
    page.get_by_role("heading", name="Export and import").first.wait_for(timeout=90_000)
    assert _href(page).split("?", 1)[1].count("=") >= href.split("?", 1)[1].count("=") - 1
