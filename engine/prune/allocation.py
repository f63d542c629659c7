"""Per-group sparsity targets from measured sensitivity (Li et al. 2017, "Pruning Filters for Efficient ConvNets",
Sect. 4.2: prune each layer alone, read the accuracy it costs, and prune the insensitive layers harder). Each group
of a device part is masked alone, one-shot by l2 norm, at a few sparsities, and the validation accuracy each costs is
read; a greedy walk then raises, one step at a time, the group whose next step costs the least accuracy per device
FLOP it saves, until the device part is as cheap as a uniform target would make it. The result maps group names to
targets; `three_step`'s pruning runs take one such map per level (`allocation="sensitivity"`) instead of the uniform
target."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from engine.models import example_input
from engine.profile import count_flops
from engine.prune.groups import ChannelGroup, apply_masks, compute_masks, prunable_groups
from engine.prune.removal import remove_pruned_channels

SENSITIVITY_STEPS = (0.125, 0.25, 0.375, 0.5, 0.625)  # sparsities each group is measured at, alone
SENSITIVITY_IMAGES = 2000  # validation images each measurement reads


def device_flops(device_part: nn.Module, sparsity: Mapping[str, float],
                 groups: list[ChannelGroup] | None = None) -> int:
    """FLOPs of `device_part` with each group's channels removed to `sparsity` (group name -> share; others kept).

    Args:
        device_part: the unpruned device part; sparsity: per-group shares of channels removed; groups: its groups.
    Returns:
        FLOPs of one image through the physically pruned part.
    """
    groups = groups if groups is not None else prunable_groups(device_part)
    masks = compute_masks(device_part, 0.0, dict(sparsity), groups)
    pruned, _ = remove_pruned_channels(device_part, masks)
    return count_flops(pruned, example_input(pruned))


def sensitivity(model: nn.Module, device_part_of: Callable[[nn.Module], nn.Module],
                evaluate: Callable[[nn.Module], float], steps: Sequence[float] = SENSITIVITY_STEPS
                ) -> dict[str, list[tuple[float, float]]]:
    """The accuracy each group costs when pruned alone, one-shot by l2 norm, at each of `steps`.

    Args:
        model: the trained model (left untouched: each measurement prunes a copy).
        device_part_of: the device part of a model (shares its parameters, e.g. `split(m, point)[0]`).
        evaluate: validation accuracy of a whole model.
        steps: rising sparsities.
    Returns:
        group name -> [(sparsity, accuracy lost)], one pair per step, the unpruned model's accuracy the reference.
    """
    reference = evaluate(model)
    out: dict[str, list[tuple[float, float]]] = {}
    for group in prunable_groups(device_part_of(model)):
        curve = []
        for s in steps:
            trial = copy.deepcopy(model)
            part = device_part_of(trial)
            groups = prunable_groups(part)
            apply_masks(part, compute_masks(part, 0.0, {group.name: s}, groups), groups)
            curve.append((float(s), reference - evaluate(trial)))
        out[group.name] = curve
    return out


def allocate(curves: Mapping[str, Sequence[tuple[float, float]]], flops: Callable[[Mapping[str, float]], float],
             goal: float) -> dict[str, float]:
    """Greedy allocation: from no pruning, repeatedly take the step (a group to its next measured sparsity) that
    loses the least accuracy per FLOP saved, until the FLOPs are at most `goal`.

    Args:
        curves: per group, rising (sparsity, accuracy lost) pairs (`sensitivity`); a loss below that of an earlier
            step is read as that earlier loss (pruning alone does not gain accuracy).
        flops: device FLOPs of a per-group sparsity map.
        goal: the FLOPs to reach.
    Returns:
        group name -> sparsity (0 for a group never raised); where even every group at its last step stays above
        `goal`, that last map.
    """
    level = {name: 0 for name in curves}
    current = {name: 0.0 for name in curves}
    cost = flops(current)
    while cost > goal:
        best: tuple[float, str, float] | None = None
        for name, curve in curves.items():
            k = level[name]
            if k >= len(curve):
                continue
            trial = {**current, name: curve[k][0]}
            saved = cost - flops(trial)
            if saved <= 0:
                continue
            lost_before = max([0.0, *(loss for _, loss in curve[:k])])
            rate = max(0.0, curve[k][1] - lost_before) / saved
            if best is None or (rate, -saved) < (best[0], -best[2]):
                best = (rate, name, saved)
        if best is None:
            break
        _, name, saved = best
        current[name] = curves[name][level[name]][0]
        level[name] += 1
        cost -= saved
    return current
