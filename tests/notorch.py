"""Run Python as on a device without torch: `python tests/notorch.py -m MODULE ARGS...` or `python tests/notorch.py
-c CODE`. Importing torch (or any torch.*) fails as if it were not installed, and the process exits with status 3,
naming what tried, if anything attempted it, even where the attempt was caught."""

from __future__ import annotations

import importlib.abc
import os
import runpy
import sys

TRIED: list[str] = []


class NoTorch(importlib.abc.MetaPathFinder):
    """Refuses torch and its submodules, recording each attempt."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in ("torch", "torchvision"):
            TRIED.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (this device has no torch)")


def main() -> None:
    sys.meta_path.insert(0, NoTorch())
    sys.path[0] = os.getcwd()  # as `python -m` would have it, not this file's folder
    mode, target, *rest = sys.argv[1:]
    try:
        if mode == "-m":
            sys.argv = [target, *rest]
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            exec(compile(target, "<notorch>", "exec"), {"__name__": "__main__"})
    finally:
        if TRIED or any(m.split(".")[0] == "torch" for m in sys.modules):
            print(f"torch was imported: {TRIED}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(3)


if __name__ == "__main__":
    main()
