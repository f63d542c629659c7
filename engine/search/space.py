"""A trial's choices: an inner split point first, then the method's own choices at that split, asked of the method
where it is defined (its `suggest`, like its `variants` and `followups`); a method without one offers the variants
its sweep grid proposes there. The end points (`original`'s device-only and server-only rows) are a study's
reference trials: measured once, first, under their own parameter, outside the sampler's split choice (with nothing
left to choose there, TPE that found an end point fast proposed it again and again, and learned nothing of the
splits in between)."""

from __future__ import annotations

from collections.abc import Sequence

from engine.config import BaseModelConfig, VariantConfig
from engine.methods import METHODS, Chooser
from engine.models import END_POINTS, split_names
from engine.profiles import profile_of

ENDPOINT = "endpoint"  # the parameter of a study's reference trials
SPACE_VERSION = 3  # part of a study's name: a study keeps the choices it was created with


def search_splits(base: BaseModelConfig) -> list[str]:
    """The split points a search chooses among: the model's coarse points between the end points."""
    return [s for s in split_names(base.model, coarse_only=True) if s not in END_POINTS]


def suggest_variant(chooser: Chooser, base: BaseModelConfig, methods: Sequence[str], *,
                    reference: bool = False) -> VariantConfig:
    """One trial's variant: a method (when several are searched), a split point, then the method's choices there.

    Args:
        chooser: asks each choice (an Optuna trial, or a `FixedTrial` to rebuild one).
        base: the base model; its profile's `SearchSpace` and grid give the choices.
        methods: the methods searched (registered names).
        reference: a reference trial: an end point (`ENDPOINT`), the baseline's row there.
    Returns:
        the chosen variant.
    """
    if reference:
        point = chooser.suggest_categorical(ENDPOINT, list(END_POINTS))
        return METHODS.get("original").suggest(chooser, base, point)
    method = methods[0] if len(methods) == 1 else chooser.suggest_categorical("method", list(methods))
    split = chooser.suggest_categorical("split", search_splits(base))
    impl = METHODS.get(method)
    suggest = getattr(impl, "suggest", None)
    if suggest is not None:
        return suggest(chooser, base, split)
    return _grid_choice(chooser, base, method, split)


def probes(base: BaseModelConfig, methods: Sequence[str]) -> list[dict]:
    """The choices a study measures first, each a trial's params: the end points (its reference trials, always its
    first), then at every inner split each method's `probe` (a choice that trains nothing, such as `three_step`
    unpruned at 8 bits), so that the sampler learns what every split costs for seconds of measurement before it
    spends minutes of training.

    Args:
        base: the base model; methods: the methods searched.
    Returns:
        the params of each probe, end points first.
    """
    out: list[dict] = [{ENDPOINT: p} for p in END_POINTS]
    for method in methods:
        probe = getattr(METHODS.get(method), "probe", None)
        if probe is None:
            continue
        extra = {} if len(methods) == 1 else {"method": method}
        out += [{**extra, "split": s, **probe} for s in search_splits(base)]
    return out


def _grid_choice(chooser: Chooser, base: BaseModelConfig, method: str, split: str) -> VariantConfig:
    """A variant the method's sweep grid proposes at `split`, chosen by its id."""
    from engine.profiles import MethodGrid
    from engine.sweep import method_variants

    grid = profile_of(base).grid.for_method(method)
    options = {v.id: v for v in method_variants(method, base, MethodGrid((split,), grid.knobs))}
    return options[chooser.suggest_categorical(f"{method}.{split}", sorted(options))]
