"""`python -m engine ...`: the command line (engine.cli)."""

from __future__ import annotations

import sys

from engine.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
