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

from engine.search.objective import OBJECTIVES, Environment, constraints, objective_values
from engine.search.pruner import HopelessPruner
from engine.search.space import suggest_variant
from engine.search.study import Search, SearchConfig, study_names, trial_table

__all__ = ["OBJECTIVES", "Environment", "HopelessPruner", "Search", "SearchConfig", "constraints", "objective_values",
           "study_names", "suggest_variant", "trial_table"]
