"""Device memory as deployed, measured: the peak resident memory of a fresh process that loads a bundle's device part
with one runtime and runs one image through it (device program and entropy coder), as `python -m engine device`
does before it connects. The profile's figure (`device_memory_bytes`: parameters + the largest activations) counts
the model alone; this counts what a device pays: the interpreter, the runtime's libraries, the loaded program and
its working memory. Shao & Zhang (2020) report that PyTorch needed over 0.9 GB for ResNet18 on a Raspberry Pi 3.

`measure_footprint` starts the child (`python -m engine.deploy.footprint --bundle B --runtime R`), which prints one
JSON line. The child imports no more than the runtime it measures (torch for TorchScript; onnxruntime and numpy for
ONNX), so each figure is that runtime's own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError, one_line

RUNTIMES = ("torchscript", "onnx")  # each row's figures: `engine.latency.MEMORY_FIGURES` (not imported here:
# pandas would count in the ONNX child's footprint)
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Footprint:
    """One runtime's measured footprint of a bundle's device part (bytes of resident memory).

    runtime: "torchscript" or "onnx".
    peak: the process's peak after loading the part and running one image (what the device must have free).
    runtime_only: the peak once the runtime was imported, before the part was read (the runtime's own share).
    threads: the runtime's threads in the child.
    """

    runtime: str
    peak: int
    runtime_only: int
    threads: int

    @property
    def part(self) -> int:
        """What loading and running the part added to the runtime alone."""
        return self.peak - self.runtime_only


def _status_bytes(key: str) -> int | None:
    """A /proc/self/status figure in bytes (Linux), or None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (VmHWM on Linux, else `ru_maxrss`)."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def _run_child(bundle: Path, runtime: str, threads: int) -> dict[str, Any]:
    """In the child: import the runtime, load the device part, run one zero image through it and its coder."""
    if runtime == "onnx":
        import numpy as np
        import onnxruntime  # noqa: F401 - its libraries are part of the footprint

        runtime_only = peak_rss_bytes()
        from engine.deploy.onnx_device import load_onnx_device

        part: Any = load_onnx_device(bundle, threads)
        image: Any = np.zeros(part.meta["input_shape"], dtype=np.uint8)
    else:
        import torch

        torch.set_num_threads(threads)
        runtime_only = peak_rss_bytes()
        from engine.deploy.bundle import load_bundle

        part = load_bundle(bundle, side="device")
        image = torch.zeros(part.meta["input_shape"], dtype=torch.uint8)
    part.encode(part.device_output(image))
    return {"runtime": runtime, "peak": peak_rss_bytes(), "runtime_only": runtime_only, "threads": threads}


def measure_footprint(bundle: Path | str, runtime: str, threads: int = 1, timeout_s: float = 300.0) -> Footprint:
    """The device part's footprint with `runtime`, measured in a fresh process.

    Args:
        bundle: a bundle directory or .zip (`python -m engine export`).
        runtime: "torchscript" or "onnx".
        threads: the runtime's threads in the child (one core of a small device by default).
        timeout_s: the child's time limit.
    Returns:
        the measured footprint.
    """
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in (str(_PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "engine.deploy.footprint", "--bundle", str(bundle), "--runtime", runtime,
           "--threads", str(threads)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(f"measuring {Path(bundle).name} with {runtime} took over {timeout_s:g} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise UserError(f"measuring {Path(bundle).name} with {runtime} failed: "
                        f"{lines[-1] if lines else f'exit {done.returncode}'}")
    return Footprint(**json.loads(done.stdout.strip().splitlines()[-1]))


def setup_args() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.deploy.footprint",
                                description="the peak resident memory of loading a bundle's device part and running "
                                            "one image (prints one JSON line)")
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--runtime", choices=RUNTIMES, required=True)
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = setup_args().parse_args(argv)
    try:
        print(json.dumps(_run_child(args.bundle, args.runtime, max(1, args.threads))))
    except UserError as exc:
        print(one_line(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
