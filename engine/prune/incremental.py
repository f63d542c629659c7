"""The paper's incremental pruning iteration (Shao & Zhang 2020): at each iteration, mask the smallest S_i percent of
each group by l2 norm (only unmasked weights train: gradient hooks zero the masked entries, and the mask is re-applied
after each optimizer step), then restore the masked filters, BN parameters and statistics to their start-of-iteration
values; S_i ramps to the target (linear or cubic, Zhu & Gupta 2018). Pruning changes parameters in place and `split`
shares them with the model: deep-copy a cached model first."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from engine.errors import UserError
from engine.prune.groups import (
    ChannelGroup,
    ChannelMasks,
    apply_masks,
    channel_norms,
    channel_view,
    check_keys,
    check_sparsity,
    compute_masks,
    masked_tensors,
    masks_from_scores,
    prunable_groups,
    stage_names,
    target_for,
)
from engine.registry import Registry

# ---------------------------------------------------------------------------------------------------- schedule

RAMPS: Registry[Callable[[float], float]] = Registry("sparsity ramp")
RAMPS.add("linear", lambda u: u)
RAMPS.add("cubic", lambda u: 1.0 - (1.0 - u) ** 3)  # Zhu & Gupta 2018, s_t = s_f (1 - (1 - t/T)^3) with s_0 = 0


@dataclass(frozen=True)
class SparsitySchedule:
    """S_i for pruning iteration i (0-based): each group's target times ramp((i + 1) / ramp_iterations), so the
    target is reached at iteration ramp_iterations - 1 and held after it. An iteration is `iteration_steps`
    optimizer steps. `per_stage` maps stages / group names / 'output' to targets (see `target_for`; the names are
    checked against the model's when a pruner takes the schedule)."""

    target: float = 0.5
    per_stage: tuple[tuple[str, float], ...] | Mapping[str, float] = ()
    ramp_iterations: int = 10
    iteration_steps: int = 100
    ramp: str = "cubic"

    def __post_init__(self) -> None:
        items = self.per_stage.items() if isinstance(self.per_stage, Mapping) else self.per_stage
        object.__setattr__(self, "per_stage", tuple(sorted((str(k), float(v)) for k, v in items)))
        check_sparsity("target", self.target)
        check_keys(dict(self.per_stage))
        if self.ramp_iterations < 1 or self.iteration_steps < 1:
            raise UserError("ramp_iterations and iteration_steps must be positive integers")
        RAMPS.get(self.ramp)

    def fraction(self, iteration: int) -> float:
        """Share of the target reached at `iteration`, in (0, 1]."""
        return float(RAMPS.get(self.ramp)(min(1.0, (iteration + 1) / self.ramp_iterations)))

    def sparsity(self, group: ChannelGroup, iteration: int) -> float:
        return target_for(group, self.target, dict(self.per_stage)) * self.fraction(iteration)


# ---------------------------------------------------------------------------------------------------- pruner


class IncrementalPruner:
    """Incremental network pruning (Shao & Zhang 2020): each iteration (1) snapshots the weights and masks the
    smallest S_i percent of each group's channels by l2 norm, (2) trains with masked forward passes and masked
    updates, (3) drops the mask and restores the masked weights to their start-of-iteration values; S_i rises along
    `schedule` until the target. `finalize()` makes the last masks permanent.

    Use one protocol: `before_step()` before each forward pass and `after_step()` after each `optimizer.step()`
    (iterations end after `iteration_steps` calls of `after_step`), or `step(i)` before the forward pass of
    optimizer step i (the iteration is i // iteration_steps; it ends when i crosses its boundary)."""

    def __init__(self, device_part: nn.Module, schedule: SparsitySchedule) -> None:
        self.device_part = device_part
        self.schedule = schedule
        self.groups = prunable_groups(device_part)
        check_keys(dict(schedule.per_stage), stage_names(device_part), (g.name for g in self.groups))
        self.iteration = -1  # the active or last iteration
        self.masks: ChannelMasks | None = None  # the active or last masks
        self.active = False
        self.final = False
        self._steps_done = 0
        self._indexed = False
        self._snapshot: dict[str, torch.Tensor] = {}
        self._grad_keep: dict[str, torch.Tensor] = {}
        self._handles = []
        for g in self.groups:
            for key, t in masked_tensors(device_part, g, stats=False):
                if t.requires_grad:
                    self._handles.append(t.register_hook(partial(self._mask_grad, key)))

    def _mask_grad(self, key: str, grad: torch.Tensor) -> torch.Tensor:
        keep = self._grad_keep.get(key)
        return grad if keep is None else grad * keep

    def sparsities(self, iteration: int | None = None) -> dict[str, float]:
        """S_i of each group at `iteration` (the current one by default)."""
        it = max(self.iteration, 0) if iteration is None else iteration
        return {g.name: self.schedule.sparsity(g, it) for g in self.groups}

    @property
    def at_target(self) -> bool:
        return self.iteration >= self.schedule.ramp_iterations - 1

    def _set_grad_masks(self, masks: ChannelMasks) -> None:
        self._grad_keep = {}
        for g in self.groups:
            for key, t in masked_tensors(self.device_part, g, stats=False):
                self._grad_keep[key] = channel_view(masks[g.name], t).to(t.dtype)

    @torch.no_grad()
    def begin_iteration(self, iteration: int) -> ChannelMasks:
        """Snapshot the weights, rank the channels and mask the smallest S_i percent."""
        if self.active:
            self.end_iteration()
        self.iteration = iteration
        self._snapshot = {key: t.detach().clone() for g in self.groups
                          for key, t in masked_tensors(self.device_part, g, stats=True)}
        scores = channel_norms(self.device_part, self.groups)
        self.masks = masks_from_scores(scores, self.sparsities(iteration))
        self._set_grad_masks(self.masks)
        apply_masks(self.device_part, self.masks, self.groups)
        self.active, self._steps_done = True, 0
        return self.masks

    @torch.no_grad()
    def end_iteration(self) -> None:
        """Drop the mask: masked channels get back their start-of-iteration weights and BN statistics."""
        if not self.active:
            return
        for g in self.groups:
            keep = self.masks[g.name]
            for key, t in masked_tensors(self.device_part, g, stats=True):
                t.copy_(torch.where(channel_view(keep, t), t, self._snapshot[key].to(t.device)))
        self._snapshot, self._grad_keep = {}, {}
        self.active = False

    def reapply(self) -> None:
        """Zero the masked entries again (after an optimizer step, momentum or weight decay may have moved them)."""
        if self.masks is not None and (self.active or self.final):
            apply_masks(self.device_part, self.masks, self.groups)

    def before_step(self) -> None:
        if not self.final and not self.active:
            self.begin_iteration(self.iteration + 1)
        else:
            self.reapply()

    def after_step(self) -> None:
        self.reapply()
        if self.active and not self._indexed:
            self._steps_done += 1
            if self._steps_done >= self.schedule.iteration_steps:
                self.end_iteration()

    def step(self, step_index: int) -> None:
        """Call before the forward pass of optimizer step `step_index` (0-based)."""
        self._indexed = True
        if self.final:
            self.reapply()
            return
        it = step_index // self.schedule.iteration_steps
        if self.active and it != self.iteration:
            self.end_iteration()
        if not self.active:
            self.begin_iteration(it)
        else:
            self.reapply()

    def finalize(self) -> ChannelMasks:
        """Make the last masks permanent (masks at the target, one-shot, if no iteration ran): the masked weights stay
        0 and keep zero gradients; pass the result to `remove_pruned_channels`."""
        if self.final:
            return self.masks
        if self.masks is None:
            self.masks = compute_masks(self.device_part, self.schedule.target, dict(self.schedule.per_stage),
                                       self.groups)
        self._snapshot = {}
        self._set_grad_masks(self.masks)
        apply_masks(self.device_part, self.masks, self.groups)
        self.active, self.final = False, True
        return self.masks

    def close(self) -> None:
        """Remove the gradient hooks from the device part's parameters."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._grad_keep = {}

    def state_dict(self) -> dict[str, Any]:
        """Resumable state (the model's own weights are saved with the model)."""
        return {"iteration": self.iteration, "active": self.active, "final": self.final,
                "steps_done": self._steps_done, "indexed": self._indexed,
                "masks": self.masks.to_dict() if self.masks is not None else None,
                "snapshot": {k: v.cpu() for k, v in self._snapshot.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iteration, self.active, self.final = state["iteration"], state["active"], state["final"]
        self._steps_done, self._indexed = state["steps_done"], state["indexed"]
        self.masks = ChannelMasks.from_dict(state["masks"]) if state["masks"] is not None else None
        self._snapshot = dict(state["snapshot"])
        self._grad_keep = {}
        if self.masks is not None and (self.active or self.final):
            self._set_grad_masks(self.masks)
