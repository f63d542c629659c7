"""A trial's choices: the split point first (the end points are `original`'s device-only and server-only rows),
then the method's own choices at that split, asked of the method where it is defined (its `suggest`, like its
`variants` and `followups`); a method without one offers the variants its sweep grid proposes there."""

from __future__ import annotations

from collections.abc import Sequence

from engine.config import BaseModelConfig, VariantConfig
from engine.methods import METHODS, Chooser
from engine.models import END_POINTS, split_names
from engine.profiles import profile_of


def search_splits(base: BaseModelConfig) -> list[str]:
    """The split points a search chooses among: the model's coarse points, end points included."""
    return split_names(base.model, coarse_only=True)


def suggest_variant(chooser: Chooser, base: BaseModelConfig, methods: Sequence[str]) -> VariantConfig:
    """One trial's variant: a method (when several are searched), a split point, then the method's choices there.

    Args:
        chooser: asks each choice (an Optuna trial, or a `FixedTrial` to rebuild one).
        base: the base model; its profile's `SearchSpace` and grid give the choices.
        methods: the methods searched (registered names).
    Returns:
        the chosen variant.
    """
    method = methods[0] if len(methods) == 1 else chooser.suggest_categorical("method", list(methods))
    split = chooser.suggest_categorical("split", search_splits(base))
    if split in END_POINTS:  # nothing to prune or code: the baseline's end point
        method = "original"
    impl = METHODS.get(method)
    suggest = getattr(impl, "suggest", None)
    if suggest is not None:
        return suggest(chooser, base, split)
    return _grid_choice(chooser, base, method, split)


def probes(base: BaseModelConfig, methods: Sequence[str]) -> list[dict]:
    """The choices a study measures first, each a trial's params: the end points, then at every inner split each
    method's `probe` (a choice that trains nothing, such as `three_step` unpruned at 8 bits), so that the sampler
    learns what every split costs for seconds of measurement before it spends minutes of training.

    Args:
        base: the base model; methods: the methods searched.
    Returns:
        the params of each probe, end points first.
    """
    out = [{"split": p} for p in END_POINTS]
    for method in methods:
        probe = getattr(METHODS.get(method), "probe", None)
        if probe is None:
            continue
        extra = {} if len(methods) == 1 else {"method": method}
        out += [{**extra, "split": s, **probe} for s in search_splits(base) if s not in END_POINTS]
    return out


def _grid_choice(chooser: Chooser, base: BaseModelConfig, method: str, split: str) -> VariantConfig:
    """A variant the method's sweep grid proposes at `split`, chosen by its id."""
    from engine.profiles import MethodGrid
    from engine.sweep import method_variants

    grid = profile_of(base).grid.for_method(method)
    options = {v.id: v for v in method_variants(method, base, MethodGrid((split,), grid.knobs))}
    return options[chooser.suggest_categorical(f"{method}.{split}", sorted(options))]
