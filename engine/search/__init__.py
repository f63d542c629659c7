"""Search instead of brute force: an Optuna study over split, pruning and coding that finds the best configuration
for an edge environment (the paper's closing problem: "it is hard to choose these three parameters automatically
under the particular edge environment", Shao & Zhang 2020).

- `space`: a trial's choices, asked of each method where it is defined (`suggest`).
- `objective`: a measured row's objective values and constraints for an environment (pure).
- `pruner`: the study's pruner, which stops trials that can no longer meet the accuracy threshold.
- `study`: the study itself, whose trials are jobs of the job queue (`Search`).
- `launch`: the command line of a study for an environment, and a detached process that runs it, one at a time.
- `watch`: a study read while it runs, and what a page draws of it.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the submodule defining it; loaded on first use, so that the command line (and a device without torch, which
# parses the same command line) does not import optuna or torch for a study it never runs
_EXPORTS = {"OBJECTIVES": "objective", "Environment": "objective", "constraints": "objective",
            "objective_values": "objective", "HopelessPruner": "pruner", "suggest_variant": "space",
            "Search": "study", "SearchConfig": "study", "study_names": "study", "trial_table": "study"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"engine.search.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'engine.search' has no attribute {name!r}")
