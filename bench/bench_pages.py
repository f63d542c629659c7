"""Page speed: each dashboard page rendered by AppTest (warm: the second and later runs) over a results store of
10,000 synthetic rows (or of each `--rows` count in turn) and a search study of 300 trials, and, when Debian's
chromium is there, the time from a link-rate slider change to the redrawn latency chart in a real browser (over the
first count's store). Run: python bench/bench_pages.py [--rows 10000 [2000 ...]] [--repeats 5]
[--browser-repeats 15] [--no-browser]."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CHROMIUM = os.environ.get("COINFER_CHROMIUM", "/usr/bin/chromium")
SPLITS = ("stem", "conv2_x", "conv3_x", "conv4_x", "conv5_x")
METHODS = ("original", "two_step_pruning", "bottlenet_pp", "three_step")
TOTAL_FLOPS = 70e6  # width 0.25


def synthetic_rows(base_id: str, n: int, seed: int = 0, base_accuracy: float = 0.9, png_bits: float = 18_000.0,
                   width: float = 0.125,
                   dataset_fingerprint: str = "synthetic") -> list[dict]:
    """`n` plausible result rows of one base model (the end points of `original` first): device FLOPs grow and
    bits shrink with the split depth, pruning and coding trade accuracy for both."""
    rng = np.random.default_rng(seed)
    common = {"base_id": base_id, "base_test_accuracy": base_accuracy, "base_val_accuracy": base_accuracy,
              "png_bits": png_bits, "width": width,
              "seed": 0, "dataset": "cifar10", "dataset_fingerprint": dataset_fingerprint, "code_version": "bench"}

    def row(method: str, split: str, knobs: dict, **metrics: float) -> dict:
        ident = hashlib.sha256(json.dumps([base_id, method, split, knobs], sort_keys=True).encode()).hexdigest()[:16]
        val = {"deployed_val_accuracy": metrics["accuracy"]}  # validation as test: the pages' tests flip them apart
        return {"id": ident, "method": method, "split": split, "knobs": knobs, **common, **val, **metrics}

    rows = [row("original", "server_only", {}, accuracy=base_accuracy, device_flops=0.0, server_flops=TOTAL_FLOPS,
                device_memory_bytes=0.0, bits_actual=png_bits, bits_ideal=png_bits, bits_raw=24_576.0),
            row("original", "device_only", {}, accuracy=base_accuracy, device_flops=TOTAL_FLOPS, server_flops=0.0,
                device_memory_bytes=2.9e6, bits_actual=4.0, bits_ideal=4.0, bits_raw=4.0)]
    i = 0
    while len(rows) < n:
        method, depth = METHODS[i % len(METHODS)], (i // len(METHODS)) % len(SPLITS)
        sparsity, bits = float(rng.uniform(0, 0.9)), int(rng.integers(2, 9))
        frac = (depth + 1) / (len(SPLITS) + 1)
        flops = TOTAL_FLOPS * frac * (1 - 0.7 * sparsity * (method != "original"))
        raw = 64 * 32 * 32 * 8 / 2 ** depth * (0.05 if method in ("bottlenet_pp", "three_step") else 1)
        actual = raw * bits / 8 * float(rng.uniform(0.3, 0.8))
        acc = base_accuracy - float(rng.uniform(0, 0.04)) * (1 + sparsity) * (9 - bits) / 6
        rows.append(row(method, SPLITS[depth], {"bits": bits, "sparsity": round(sparsity, 3), "n": i},
                        accuracy=acc, device_flops=flops, server_flops=TOTAL_FLOPS - flops,
                        device_memory_bytes=3e6 * frac * (1 - sparsity / 2), device_params_bytes=2e6 * frac,
                        device_activation_bytes=1e6 * frac, bits_actual=actual, bits_ideal=actual * 0.95,
                        bits_raw=raw * 4, feature_shape=[16 * 2 ** depth, 32 // 2 ** depth, 32 // 2 ** depth]))
        i += 1
    return rows[:n]


def prepare_cache(root: Path, data: Path, rows: int) -> tuple[Path, str]:
    """A cache holding the decoded data (shared with the project's cache when there) and `rows` synthetic rows on
    the smoke profile's base model; returns it and that base id."""
    from engine.data import load_data, subset
    from engine.profiles import PROFILES
    from engine.store import ResultsStore

    cache = root / "cache"
    (cache / "data").mkdir(parents=True)
    for f in (PROJECT_ROOT / "cache" / "data").glob("*"):
        (cache / "data" / f.name).symlink_to(f)
    full = load_data(data, cache_dir=cache)
    small = subset(full, PROFILES.get("smoke").train_limit, PROFILES.get("smoke").test_limit, seed=0)
    base = PROFILES.get("smoke").base_config(small.fingerprint)
    table = synthetic_rows(base.id, rows, dataset_fingerprint=small.fingerprint)
    ResultsStore(cache / "results.sqlite").put_many(table)
    _search_study(cache, table, small.fingerprint, min(rows, SEARCH_TRIALS))
    return cache, base.id


SEARCH_TRIALS = 300  # trials of the study the Search page shows (a search makes many)


def _search_study(cache: Path, rows: list[dict], fingerprint: str, n: int) -> None:
    """The latency study the Search page names for its default environment, with `n` complete trials made from the
    first rows (through the tests' trial builder, which tells trials as the search does)."""
    import optuna

    from engine.latency import DEVICES
    from engine.profiles import PROFILES
    from engine.search.launch import SearchRequest
    from engine.search.study import storage

    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from search_trials import complete

    request = SearchRequest.of("smoke", DEVICES.get("pi3"), DEVICES.get("rtx2080ti"), 40e3 * 8, drop=0.02,
                               width=0.125, model="resnet18")
    base = PROFILES.get("smoke").base_config(fingerprint, width=0.125)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage(cache), study_name=request.config(base).name)
    study.set_user_attr("threshold", 0.88)
    study.add_trials([complete(r, request.environment(), 0.02) for r in rows[:n]])


def bench_apptest(pages: list[str], repeats: int) -> dict[str, tuple[float, float, float]]:
    """Per page, seconds of: the first session (cold caches); a new session opening the page's URL, warm caches
    (the entrypoint with its sidebar, plus a second run for a page other than the default one, which a `?page=`
    URL switches to); and a rerun within the session (AppTest reruns only the page script). Medians of `repeats`."""
    from streamlit.testing.v1 import AppTest

    def session(page: str) -> tuple[AppTest, float]:
        at = AppTest.from_file(str(PROJECT_ROOT / "dashboard.py"), default_timeout=120)
        at.query_params.update({"profile": "smoke", "width": "0.125", "page": page})
        start = time.perf_counter()
        at.run()
        if at.exception:
            raise RuntimeError(f"{page}: {at.exception[0].message}")
        return at, time.perf_counter() - start

    out = {}
    for page in pages:
        at, cold = session(page)
        opened, reruns = [], []
        for _ in range(repeats):
            at, seconds = session(page)
            opened.append(seconds)
            start = time.perf_counter()
            at.run()
            reruns.append(time.perf_counter() - start)
        out[page] = (cold, statistics.median(opened), statistics.median(reruns))
    return out


def bench_browser(cache: Path, data: Path, repeats: int) -> list[float]:
    """Seconds from pressing → on the focused link-rate slider to the latency chart showing the new rate."""
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "COINFER_CACHE": str(cache), "COINFER_DATA": str(data)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/?page=latency&profile=smoke&width=0.125&rate_kBps=1")
            page.wait_for_selector(".js-plotly-plot", timeout=120_000)
            slider = _rate_slider(page)
            times = []
            for i in range(repeats + 1):
                label = page.locator(".js-plotly-plot .annotation-text").first.text_content()
                slider.first.focus()
                start = time.perf_counter()
                page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
                page.wait_for_function(
                    "old => { const a = document.querySelector('.js-plotly-plot .annotation-text');"
                    " return a && a.textContent !== old; }", arg=label, timeout=30_000)
                times.append(time.perf_counter() - start)
            browser.close()
        return times[1:]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _rate_slider(page):  # noqa: ANN001, ANN202
    """The link-rate slider's range input (in the sidebar; on the latency page, above its chart)."""
    return page.locator('input[type="range"][aria-label="Link rate"]')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000],
                        help="result rows in the store; several counts are measured one after the other")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("COINFER_DATA", DEFAULT_DATA)))
    parser.add_argument("--browser-repeats", type=int, default=15, help="slider changes timed in the browser")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    pages = [p for p in ("plane", "latency", "noisy", "compare", "jobs", "export", "search")
             if (PROJECT_ROOT / "app_pages" / f"{p}.py").exists()]
    for i, rows in enumerate(args.rows):
        with tempfile.TemporaryDirectory() as tmp:
            cache, _ = prepare_cache(Path(tmp), args.data, rows)
            os.environ["COINFER_CACHE"], os.environ["COINFER_DATA"] = str(cache), str(args.data)
            print(f"{rows} result rows, AppTest, medians of {args.repeats}: new session on the page's URL (warm "
                  "caches) / rerun in the session / first session (cold)")
            for page, (cold, opened, rerun) in bench_apptest(pages, args.repeats).items():
                print(f"  {page:8s} {opened * 1e3:6.0f} ms  {rerun * 1e3:6.0f} ms  {cold * 1e3:6.0f} ms")
            if i == 0 and not args.no_browser and Path(CHROMIUM).exists():
                times = bench_browser(cache, args.data, args.browser_repeats)
                print(f"browser, latency page: link-rate slider change to redrawn chart: median "
                      f"{statistics.median(times) * 1e3:.0f} ms, 90th percentile "
                      f"{statistics.quantiles(times, n=10)[-1] * 1e3:.0f} ms, max {max(times) * 1e3:.0f} ms over "
                      f"{len(times)} changes")


if __name__ == "__main__":
    main()
