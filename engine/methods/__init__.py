"""The methods compared (the paper's Figure 3 curves), each registered in `METHODS` where it is defined: a method
turns a VariantConfig into one profiled metrics row by composing its device part (pruned or not) with a coding."""

from engine.methods.base import (
    METHODS,
    Chooser,
    Method,
    RunContext,
    base_row,
    check_knob_names,
    check_training_knobs,
    check_variant,
    knob_number,
    refuse_end_points,
)

# isort: split
# each module registers its method; in this order, the registry's (and the dashboard's) order
from engine.methods import bottlenet_pp, original, three_step, two_step_pruning  # noqa: F401, I001

__all__ = ["METHODS", "Chooser", "Method", "RunContext", "base_row", "check_knob_names", "check_training_knobs",
           "check_variant", "knob_number", "refuse_end_points"]
