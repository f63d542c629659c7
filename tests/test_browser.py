"""Real-browser tests: the dashboard served by Streamlit, driven by Playwright in Debian's chromium
(/usr/bin/chromium). Each page is opened, a control moved, and a screenshot saved under test-output/."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cache_sharing_data

from engine.config import PROFILES
from engine.data import ImageData
from engine.methods import METHODS, RunContext
from engine.models import split_names
from engine.store import ResultsStore

pytestmark = pytest.mark.browser
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("COINFER_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = PROJECT_ROOT / "test-output" / "screenshots"
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
    cache = cache_sharing_data(tmp_path_factory.mktemp("browser"), tmp_cache)
    profile = PROFILES.get("smoke")
    ctx = RunContext(small_data, profile, cache)
    method = METHODS.get("original")
    rows = [method.run(v, ctx) for v in method.variants(profile.base_config(small_data.fingerprint), split_names())]
    ResultsStore(cache / "results.sqlite").put_many(rows)
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


def _open(browser, url: str):  # noqa: ANN001, ANN202
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector(".js-plotly-plot", timeout=90_000)
    return page


def _screenshot(page, name: str) -> None:  # noqa: ANN001
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_plane_page_draws_the_measured_points(server: str, browser) -> None:  # noqa: ANN001
    page = _open(browser, f"{server}/?profile=smoke&width=0.125")
    page.get_by_text("Communication-computation plane").first.wait_for()
    points = page.locator(".js-plotly-plot .scatterlayer .trace .points path")
    assert points.count() >= 5  # stem .. device_only (server-only is the PNG line)
    assert page.locator(".js-plotly-plot .g-ytitle").first.text_content() == "bits per image (actual bitstream)"
    page.get_by_text("Ideal bits").first.click()  # the toggle redraws the figure on the ideal bits
    page.locator(".js-plotly-plot .g-ytitle", has_text="bits per image (ideal)").wait_for(timeout=60_000)
    playwright_api.expect(page.locator(".js-plotly-plot")).to_have_count(1, timeout=30_000)
    _screenshot(page, "plane")
    page.close()
