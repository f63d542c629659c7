"""`two_step_pruning`: the 2-Step Pruning baseline of Shi et al. 2019 ("Improving device-edge cooperative inference
of deep learning via 2-step pruning"), as Shao & Zhang 2020 compare against it (Fig. 3).

Step 1 prunes channels across the whole network, device and server alike, and fine-tunes: rounds of one-shot
l2-norm channel masks at rising global sparsities (`step1_levels`; masked channels stay masked, since their
weights are 0 they rank first in the next round), each followed by `step1_steps` of fine-tuning with the masks held.
Step 1 does not depend on the split, so its run is cached once and shared by every split; each round is a snapshot.
Step 2 prunes only the layer right before the split, to cut the transmitted channels: the channel group producing
the split output (in a ResNet the whole residual stream of that stage, tied by the additions) keeps `1 - step2` of
the channels step 1 left, and the network is fine-tuned again. The pruned channels are removed from the whole
network; the feature is sent 8-bit quantised and Huffman-coded, as `original` does."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.coding import FEATURE_CODINGS, Deployed
from engine.config import BaseModelConfig, VariantConfig, config_id
from engine.data import ImageData, train_val_split
from engine.errors import UserError
from engine.finetune import FinetuneConfig, TrainHooks, finetune
from engine.methods.base import (
    METHODS,
    RunContext,
    check_knob_names,
    check_training_knobs,
    knob_number,
    refuse_end_points,
)
from engine.methods.three_step import measure_row, validation_accuracy
from engine.models import END_POINTS, split
from engine.profiles import PROFILES, TwoStepBudget, profile_of
from engine.provenance import merge_environments
from engine.prune import (
    ChannelGroup,
    ChannelMasks,
    IncrementalPruner,
    SparsitySchedule,
    channel_norms,
    masks_from_scores,
    prunable_groups,
    remove_pruned_channels,
)
from engine.train import make_model
from engine.training import pick_device, save_checkpoint

DEFAULTS: dict[str, Any] = {"momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "cosine_restarts"}
STEP1_KNOBS = ("step1_levels", "step1_steps", "lr", "batch_size", "momentum", "weight_decay", "lr_schedule")


def knobs_of(cfg: VariantConfig, profile: str) -> dict[str, Any]:
    """The variant's knobs over the profile budget's and DEFAULTS; `step1` defaults to the last step-1 level."""
    knobs = {**PROFILES.get(profile).two_step.knobs(), **DEFAULTS, **dict(cfg.knobs)}
    knobs["step1_levels"] = tuple(float(s) for s in knobs["step1_levels"])
    levels = knobs["step1_levels"]
    if not levels or any(not 0.0 <= s < 1.0 for s in levels) or list(levels) != sorted(levels):
        raise UserError(f"step1_levels must be rising sparsities in [0, 1), got {levels}")
    knobs["step1"] = float(knobs.get("step1", levels[-1]))
    if knobs["step1"] not in levels:
        raise UserError(f"step1={knobs['step1']} is not one of step1_levels {levels}")
    if not 0.0 <= float(knobs["step2"]) < 1.0:
        raise UserError(f"step2 must be in [0, 1), got {knobs['step2']}")
    return knobs


def _finetune_config(knobs: Mapping[str, Any], epochs: int, steps: int, seed: int, precision: str) -> FinetuneConfig:
    return FinetuneConfig(epochs=epochs, steps_per_epoch=steps, batch_size=int(knobs["batch_size"]),
                          lr=float(knobs["lr"]), momentum=float(knobs["momentum"]),
                          weight_decay=float(knobs["weight_decay"]), lr_schedule=str(knobs["lr_schedule"]),
                          seed=seed, precision=precision)


def _hold(model: nn.Module, masks: ChannelMasks | None, target: float = 0.0) -> IncrementalPruner:
    """Permanent masks on `model`: `masks`, or one-shot l2 masks at `target` when None. Masked weights are zeroed,
    get zero gradients, and are zeroed again after every step (`IncrementalPruner.finalize`)."""
    pruner = IncrementalPruner(model, SparsitySchedule(target))
    pruner.masks = masks
    pruner.finalize()
    return pruner


class _Step1Hooks(TrainHooks):
    """Round r (an epoch) starts by masking the global step1_levels[r] of every group's channels, holds the masks
    while fine-tuning, and ends with a snapshot."""

    def __init__(self, model: nn.Module, levels: tuple[float, ...], steps: int,
                 val: tuple[torch.Tensor, torch.Tensor], data: ImageData) -> None:
        self.model, self.levels, self.steps, self.val, self.data = model, levels, steps, val, data
        self.pruner: IncrementalPruner | None = None
        self.snapshots: list[dict[str, Any]] = []

    def before_step(self, step: int) -> None:
        if step % self.steps == 0 or self.pruner is None:
            if self.pruner is not None:
                self.pruner.close()
            self.pruner = _hold(self.model, None, self.levels[step // self.steps])
        self.pruner.before_step()

    def after_step(self, step: int) -> None:
        self.pruner.after_step()

    def end_epoch(self, epochs_done: int) -> bool:
        self.snapshots.append({
            "sparsity": self.levels[epochs_done - 1],
            "masks": self.pruner.masks.to_dict(),
            "val_accuracy": validation_accuracy(self.model, self.data, *self.val),
            "state_dict": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.model.state_dict().items()},
        })
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.snapshots = list(state["snapshots"])

    def close(self) -> None:
        if self.pruner is not None:
            self.pruner.close()


class _HoldHooks(TrainHooks):
    def __init__(self, pruner: IncrementalPruner) -> None:
        self.pruner = pruner

    def before_step(self, step: int) -> None:
        self.pruner.before_step()

    def after_step(self, step: int) -> None:
        self.pruner.after_step()


def _splits(data: ImageData, base: BaseModelConfig) -> tuple[torch.Tensor, ...]:
    return train_val_split(data, base.val_fraction, base.seed)


def step1_run(cfg: VariantConfig, ctx: RunContext, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Step 1 (split-independent, cached): the whole network's snapshot after each round."""
    step1 = {k: knobs[k] for k in STEP1_KNOBS}
    key = config_id({"method": "two_step_pruning/step1", "base": cfg.base, "knobs": step1})
    path = ctx.cache / "models" / f"two_step_pruning-step1-{key}.pt"
    return ctx.cached_run(path, "two_step_pruning's step-1 run", lambda: _step1(cfg, ctx, knobs, step1, key, path))


def _step1(cfg: VariantConfig, ctx: RunContext, knobs: Mapping[str, Any], step1: dict[str, Any], key: str,
           path: Path) -> dict[str, Any]:
    base, _ = ctx.base(cfg.base)
    device = pick_device()
    model = copy.deepcopy(base).to(device)
    train_x, train_y, val_x, val_y = _splits(ctx.data, cfg.base)
    levels, steps = tuple(knobs["step1_levels"]), int(knobs["step1_steps"])
    hooks = _Step1Hooks(model, levels, steps, (val_x, val_y), ctx.data)
    progress = ctx.progress

    def report(fraction: float, message: str) -> None:
        if progress:
            progress(fraction, f"two_step_pruning step 1: {message}")

    result = finetune(model, train_x, train_y, ctx.data.mean, ctx.data.std,
                      _finetune_config(knobs, len(levels), steps, cfg.base.seed, cfg.base.precision), hooks=hooks,
                      checkpoint=path.with_suffix(".partial.pt"), progress=report, device=device)
    hooks.close()
    run = {"key": key, "knobs": step1, "seconds": result.seconds, "snapshots": hooks.snapshots,
           "trained_on": result.trained_on}
    save_checkpoint(run, path)
    return run


def output_group(model: nn.Module, point: str) -> ChannelGroup:
    """The whole model's channel group that produces the output of the device part at `point` (the transmitted
    channels): found through the identity of a producing conv, shared by `split`."""
    device, _ = split(model, point)
    out = next(g for g in prunable_groups(device) if g.is_output)
    conv = device.get_submodule(out.producers[0])
    path = next(n for n, m in model.named_modules() if m is conv)
    return next(g for g in prunable_groups(model) if path in g.producers)


def device_masks(model: nn.Module, point: str, masks: ChannelMasks) -> ChannelMasks:
    """Whole-model masks restricted to the groups of the device part at `point` (renamed to the device's groups)."""
    device, _ = split(model, point)
    paths = {id(m): n for n, m in model.named_modules()}
    owner = {c: g.name for g in prunable_groups(model) for c in g.producers}
    return ChannelMasks({g.name: masks[owner[paths[id(device.get_submodule(g.producers[0]))]]]
                         for g in prunable_groups(device)})


def step2_run(cfg: VariantConfig, ctx: RunContext, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Step 2 at the variant's split, from the step-1 snapshot at sparsity `step1` (cached)."""
    if cfg.split in END_POINTS:
        raise UserError(f"two_step_pruning cuts the channels sent at a split; {cfg.split!r} sends none: use the "
                        "`original` method for the end points")
    s1 = step1_run(cfg, ctx, knobs)
    snap = s1["snapshots"][list(knobs["step1_levels"]).index(knobs["step1"])]
    key = config_id({"method": "two_step_pruning/step2", "step1": s1["key"], "step1_sparsity": knobs["step1"],
                     "split": cfg.split, "step2": float(knobs["step2"]), "steps": int(knobs["step2_steps"])})
    path = ctx.cache / "models" / f"two_step_pruning-{key}.pt"
    return ctx.cached_run(path, f"two_step_pruning's step-2 run at {cfg.split}",
                          lambda: _step2(cfg, ctx, knobs, s1, snap, key, path))


def _step2(cfg: VariantConfig, ctx: RunContext, knobs: Mapping[str, Any], s1: Mapping[str, Any],
           snap: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    device = pick_device()
    model = make_model(cfg.base, ctx.data)
    model.load_state_dict(snap["state_dict"])
    masks1 = ChannelMasks.from_dict(snap["masks"])
    group = output_group(model, cfg.split)
    kept = masks1.kept(group.name)
    pruned_total = group.channels - kept + math.floor(float(knobs["step2"]) * kept + 1e-6)
    # zero-norm (step-1 masked) channels rank first; keep at least one
    new = masks_from_scores({group.name: channel_norms(model, [group])[group.name]},
                            {group.name: pruned_total / group.channels})
    masks2 = ChannelMasks({**masks1, group.name: new[group.name]})
    model.to(device)
    pruner = _hold(model, masks2)
    train_x, train_y, val_x, val_y = _splits(ctx.data, cfg.base)
    progress = ctx.progress

    def report(fraction: float, message: str) -> None:
        if progress:
            progress(fraction, f"two_step_pruning step 2 at {cfg.split}: {message}")

    ft = _finetune_config(knobs, 1, int(knobs["step2_steps"]), cfg.base.seed + 1, cfg.base.precision)
    result = finetune(model, train_x, train_y, ctx.data.mean, ctx.data.std, ft, hooks=_HoldHooks(pruner),
                      checkpoint=path.with_suffix(".partial.pt"), progress=report, device=device)
    pruner.close()
    run = {"key": key, "step1_key": s1["key"], "masks": masks2.to_dict(), "output_group": group.name,
           "val_accuracy": validation_accuracy(model, ctx.data, val_x, val_y),
           "step1_val_accuracy": snap["val_accuracy"], "seconds": s1["seconds"] + result.seconds,
           "trained_on": merge_environments(s1.get("trained_on"), result.trained_on),
           "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
    save_checkpoint(run, path)
    return run


@dataclass
class TwoStepPruned:
    masked_model: nn.Module
    masks: ChannelMasks  # whole-model masks
    device: nn.Module
    server: nn.Module
    info: dict[str, Any]


def pruned_split(cfg: VariantConfig, ctx: RunContext) -> TwoStepPruned:
    """The masked whole model of a variant and its deployed parts, pruned channels removed on both sides."""
    knobs = knobs_of(cfg, ctx.profile.budget_name)
    run = step2_run(cfg, ctx, knobs)
    model = make_model(cfg.base, ctx.data)
    model.load_state_dict(run["state_dict"])
    model.eval()
    masks = ChannelMasks.from_dict(run["masks"])
    small, _ = remove_pruned_channels(model, masks)
    device, server = split(small.eval(), cfg.split)
    dev = device_masks(model, cfg.split, masks)
    sent = [g.name for g in prunable_groups(split(model, cfg.split)[0]) if g.is_output]
    info = {"step1_sparsity": knobs["step1"], "step2_sparsity": float(knobs["step2"]),
            "sparsity": dev.sparsity(), "output_sparsity": dev.sparsity_of(sent), "network_sparsity": masks.sparsity(),
            "val_accuracy": run["val_accuracy"], "step1_val_accuracy": run["step1_val_accuracy"],
            "prune_seconds": run["seconds"], "prune_trained_on": run.get("trained_on")}
    return TwoStepPruned(model, masks, device, server, info)


class TwoStepPruning:
    """Shi et al. 2019: whole-network channel pruning, then pruning of the layer before the split; 8-bit + Huffman."""

    def variants(self, base: BaseModelConfig, splits: list[str]) -> list[VariantConfig]:
        budget = profile_of(base).two_step
        return [VariantConfig.make("two_step_pruning", s, base, bits=8, step1=s1, **budget.knobs())
                for s1 in budget.step1_levels for s in splits if s not in END_POINTS]

    def check(self, cfg: VariantConfig, profile: str) -> None:
        """The budget's knobs, DEFAULTS, `step1` (one of step1_levels) and `bits` of the 8-bit + Huffman coding."""
        check_knob_names(cfg, [*TwoStepBudget.__dataclass_fields__, *DEFAULTS, "step1", "bits"])
        refuse_end_points(cfg, "cuts the channels before a split")
        knob_number("bits", cfg.knob("bits", 8), int, 1, 16)
        knobs = knobs_of(cfg, profile)
        for name in ("step1_steps", "step2_steps"):
            knob_number(name, knobs[name], int, 1)
        check_training_knobs(knobs)
        _finetune_config(knobs, len(knobs["step1_levels"]), int(knobs["step1_steps"]), cfg.base.seed,
                         cfg.base.precision)

    def run(self, cfg: VariantConfig, ctx: RunContext) -> dict:
        pruned = pruned_split(cfg, ctx)
        return measure_row(cfg, ctx, pruned.device, pruned.server, "none", **pruned.info)

    def deploy(self, cfg: VariantConfig, ctx: RunContext) -> Deployed:
        pruned = pruned_split(cfg, ctx)
        return FEATURE_CODINGS.get("none").deploy(pruned.device, pruned.server, cfg, ctx)


METHODS.add("two_step_pruning", TwoStepPruning())
