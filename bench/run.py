"""Runs the benchmarks and writes each one's output into its own section of BENCHMARKS.md, between the markers
`<!-- bench:KEY -->` and `<!-- /bench:KEY -->`; text outside the markers (the analysis) is kept. A benchmark whose
section is missing is appended at the end.
Run: make bench  (or python bench/run.py [--data PATH] [--only KEY ...] [--list])."""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = PROJECT_ROOT / "BENCHMARKS.md"
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@dataclass(frozen=True)
class Bench:
    key: str
    title: str
    argv: tuple[str, ...]  # after the interpreter; "DATA" is replaced by --data


# Cheapest first; the quick-profile ones train (minutes to an hour on 2 cores) unless their checkpoints are cached.
BENCHES = (
    Bench("data", "Data load", ("bench/bench_data.py", "--data", "DATA")),
    Bench("train", "Training throughput", ("bench/bench_train.py", "--data", "DATA", "--precision", "auto", "bf16")),
    Bench("codecs", "Huffman encoder", ("-m", "bench.bench_codecs")),
    Bench("original", "Quick profile: the `original` method",
          ("-m", "engine", "run", "original", "--profile", "quick", "--data", "DATA")),
    Bench("pruning", "Pruning at conv4_x", ("bench/bench_pruning.py", "--profile", "quick", "--data", "DATA")),
    Bench("encoding", "Feature encoding at conv4_x", ("bench/bench_encoding.py", "--profile", "quick", "--data",
                                                      "DATA", "--bottlenet")),
    Bench("sweep", "Quick sweep", ("bench/bench_sweep.py", "--profile", "quick", "--data", "DATA")),
    Bench("search", "Search against the grid", ("bench/bench_search.py", "--profile", "quick", "--data", "DATA",
                                                 "--threads", "1")),
    Bench("precision", "Training precision: quick-bf16 against quick",
          ("bench/bench_precision.py", "--profiles", "quick", "quick-bf16", "--data", "DATA")),
    Bench("tradeoff", "Trade-off figures of the quick profile",
          ("bench/bench_tradeoff.py", "--profile", "quick", "--data", "DATA")),
    Bench("coinference", "Real co-inference against the latency model",
          ("bench/bench_coinference.py", "--profile", "quick", "--data", "DATA",
           "--splits", "conv4_x", "conv5_x", "server_only")),
    Bench("onnx", "Device part without torch: onnxruntime against TorchScript",
          ("bench/bench_onnx.py", "--profile", "quick", "--data", "DATA")),
    Bench("footprint", "Device memory as deployed", ("bench/bench_footprint.py", "--data", "DATA")),
    Bench("original-paper-cpu", "Width 1.0 on a CPU (paper-cpu): the `original` method, Fig. 1",
          ("-m", "engine", "run", "original", "--profile", "paper-cpu", "--data", "DATA")),
    Bench("tradeoff-paper-cpu", "Width 1.0 on a CPU (paper-cpu): trade-off figures",
          ("bench/bench_tradeoff.py", "--profile", "paper-cpu", "--data", "DATA", "--memory", "torchscript")),
    Bench("mobilenetv2", "MobileNetV2 on the quick profile",
          ("bench/bench_model.py", "--model", "mobilenetv2", "--profile", "quick", "--data", "DATA", "--sweep")),
    Bench("trickle", "Slow clients: a device session under 64 trickling connections", ("bench/bench_trickle.py",)),
    Bench("pages", "Dashboard speed", ("bench/bench_pages.py", "--rows", "10000", "2000", "--repeats", "5", "--data",
                                       "DATA")),
)


def machine() -> str:
    import torch

    cpu, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    # CPUs of one name differ by their vector units, which set the speed of training on them
    vector = next((name for flag, name in (("avx512_bf16", "AVX-512 with bf16"), ("avx512f", "AVX-512"),
                                           ("avx2", "AVX2")) if flag in flags), None)
    cpu = f"{cpu} ({vector})" if vector else cpu
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores, {mem:.0f} GiB RAM, GPU: {gpu}; Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def run(bench: Bench, data: str) -> str:
    argv = [data if a == "DATA" else a for a in bench.argv]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, *argv], cwd=PROJECT_ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"benchmark {bench.key} failed (exit {out.returncode}): {tail[0]}")
    command = "python " + " ".join("DATA" if a == data else a for a in argv)
    text = out.stdout.strip()
    if not any(line.startswith("|") for line in text.splitlines()):  # plain text: keep its columns
        text = f"```\n{text}\n```"
    return (f"`{command}` — {time.strftime('%Y-%m-%d')}, {time.perf_counter() - start:.0f} s, load average "
            f"{os.getloadavg()[0]:.1f} after; {machine()}.\n\n{text}")


HEADING = re.compile(r"(#{1,6}) ")


def heading_levels(lines: list[str]) -> list[int | None]:
    """Per line, its Markdown heading level, or None (not a heading, or inside fenced code)."""
    fenced, out = False, []
    for line in lines:
        fenced ^= line.startswith("```")
        match = None if fenced else HEADING.match(line)
        out.append(len(match.group(1)) if match else None)
    return out


def nest_headings(body: str, level: int) -> str:
    """`body` with its Markdown headings shifted so that the highest sits at `level` + 1, under the heading its
    section is written below (those inside fenced code left alone).

    Args:
        body: a benchmark's output.
        level: the level of the heading above the section (2 for `##`).
    Returns:
        The body, its headings nested.
    """
    lines = body.split("\n")
    levels = heading_levels(lines)
    found = [n for n in levels if n is not None]
    if not found:
        return body
    shift = level + 1 - min(found)
    return "\n".join(line if n is None else "#" * min(6, n + shift) + line[n:]
                     for line, n in zip(lines, levels, strict=True))


def replace_section(text: str, bench: Bench, body: str) -> str:
    """`text` with the section of `bench` set to `body` (appended as a new `##` section when missing), its headings
    nested under the heading above the section (`nest_headings`)."""
    start, end = f"<!-- bench:{bench.key} -->", f"<!-- /bench:{bench.key} -->"
    found = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S).search(text)
    if found is None:
        return text.rstrip("\n") + f"\n\n## {bench.title}\n\n{start}\n{nest_headings(body, 2)}\n{end}\n"
    above = [n for n in heading_levels(text[:found.start()].split("\n")) if n is not None]
    block = f"{start}\n{nest_headings(body, above[-1] if above else 1)}\n{end}"
    return text[:found.start()] + block + text[found.end():]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--only", nargs="+", metavar="KEY", help="run only these benchmarks")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args()
    keys = [b.key for b in BENCHES]
    if args.list:
        print("\n".join(f"{b.key:10} {b.title}" for b in BENCHES))
        return
    unknown = sorted(set(args.only or ()) - set(keys))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; choose from: {', '.join(keys)}")
    for bench in BENCHES:
        if args.only and bench.key not in args.only:
            continue
        print(f"running {bench.key}: {bench.title}…", file=sys.stderr)
        body = run(bench, args.data)
        # read again after each benchmark (which may run for an hour): edits made meanwhile outside its section stay
        text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
        text = replace_section(text, bench, body)
        tmp = BENCHMARKS.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(BENCHMARKS)  # after each benchmark, atomically: a long run interrupted keeps what it measured
    print("wrote BENCHMARKS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
