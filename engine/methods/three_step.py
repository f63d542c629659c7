"""`three_step`: the paper's framework (Shao & Zhang 2020, Fig. 2): split the network, prune the device part
incrementally, encode the feature with any registered coding (`encoder` knob; "none" is 8-bit + Huffman). One cached
pruning run per (base, split, pruning knobs): l2-norm channel pruning of the device part with the paper's
mask / train / restore iteration, ramping in `levels` steps to the targets (global `target`, per-stage targets and
`output`, the activation pruning of the split output; or, with `allocation="sensitivity"`, per-group targets chosen
on validation images for the same device FLOPs); each level's validated snapshot is a variant of its own (knob
`snapshot`), and `snapshot="threshold"` keeps the last one whose validation accuracy holds the base's minus
`threshold_drop` points (`stop=True` ends the ramp there). Pruned channels are removed before measuring."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import intermediate
from engine.coding import FEATURE_CODINGS, Deployed
from engine.coding.learned import EncodingConfig, is_learned, reaches_no_further
from engine.config import REPLICATE_KNOB, BaseModelConfig, VariantConfig, config_id, training_seed
from engine.data import ImageData, train_val_split
from engine.errors import UserError
from engine.finetune import FinetuneConfig, LossFn, TrainHooks, finetune
from engine.methods.base import (
    METHODS,
    Chooser,
    RunContext,
    base_row,
    check_knob_names,
    check_training_knobs,
    knob_number,
    refuse_end_points,
)
from engine.models import END_POINTS, split
from engine.pareto import DECISION_COLUMN, WIN_BACK, accuracy_threshold_default
from engine.profile import count_flops, profile_parts
from engine.profiles import BUDGET_NEUTRAL, PROFILES, Profile, PruneBudget, profile_of
from engine.prune import (
    RAMPS,
    SENSITIVITY_IMAGES,
    SENSITIVITY_STEPS,
    ChannelGroup,
    ChannelMasks,
    IncrementalPruner,
    SparsitySchedule,
    allocate,
    device_flops,
    prunable_groups,
    remove_pruned_channels,
    sensitivity,
    target_for,
)
from engine.report import provably_dominated
from engine.train import accuracy, make_model
from engine.training import discard_checkpoint, load_checkpoint, pick_device, save_checkpoint

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class LevelSchedule(SparsitySchedule):
    """The sparsity ramp in `levels` equal steps: level k (0-based) ramps each group from k/levels to (k+1)/levels
    of its target over `ramp_iterations` pruning iterations (shaped by `ramp`), then holds it for `hold_iterations`
    iterations; the snapshot of level k is taken at its last iteration's end, masks still on."""

    levels: int = 3
    hold_iterations: int = 0
    # per level, group name -> its sparsity at that level (`engine.prune.allocation`); empty: each level the
    # fraction (k + 1) / levels of every group's target
    level_targets: tuple[tuple[tuple[str, float], ...], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.levels < 1 or self.hold_iterations < 0:
            raise UserError("levels must be >= 1 and hold_iterations >= 0")
        levels = tuple(tuple(sorted((str(k), float(v)) for k, v in dict(t).items())) for t in self.level_targets)
        object.__setattr__(self, "level_targets", levels)
        if levels and len(levels) != self.levels:
            raise UserError(f"level_targets gives {len(levels)} levels, the schedule has {self.levels}")

    def sparsity(self, group: ChannelGroup, iteration: int) -> float:
        if not self.level_targets:
            return super().sparsity(group, iteration)
        k, share = self._position(iteration)
        prev = dict(self.level_targets[k - 1]).get(group.name, 0.0) if k else 0.0
        cur = dict(self.level_targets[k]).get(group.name, 0.0)
        return prev + (cur - prev) * share

    def _position(self, iteration: int) -> tuple[int, float]:
        """(the level of `iteration`, the share of the way from the last level's sparsity to its own reached)."""
        k = min(iteration // self.level_iterations, self.levels - 1)
        j = iteration - k * self.level_iterations
        return k, 1.0 if j >= self.ramp_iterations else float(RAMPS.get(self.ramp)((j + 1) / self.ramp_iterations))

    @property
    def level_iterations(self) -> int:
        return self.ramp_iterations + self.hold_iterations

    @property
    def level_steps(self) -> int:
        return self.level_iterations * self.iteration_steps

    def level_fraction(self, level: int) -> float:
        return (level + 1) / self.levels

    def fraction(self, iteration: int) -> float:
        k, share = self._position(iteration)
        return (k + share) / self.levels


# ---------------------------------------------------------------------------------------------------- knobs

# Knobs that define a pruning run (its cache key), with their defaults beyond the profile budget.
RUN_DEFAULTS: dict[str, Any] = {"per_stage": (), "output": None, "ramp": "cubic", "momentum": 0.9,
                                "weight_decay": 5e-4, "lr_schedule": "cosine_restarts", "threshold_drop": 2.0,
                                "stop": False, **BUDGET_NEUTRAL, REPLICATE_KNOB: 0}
RUN_KNOBS = (*PruneBudget.__dataclass_fields__, *RUN_DEFAULTS)
# Knobs added to a pruning run's key after runs were stored: left out of the key at this value, so that every
# stored run keeps its key (`distill` and `allocation` live in PruneBudget too, with the same defaults; `replicate`
# moves the run's seed: `VariantConfig.training_seed`)
KEY_NEUTRAL: dict[str, Any] = {**BUDGET_NEUTRAL, REPLICATE_KNOB: 0}
# `allocation` (`PruneBudget.allocation`): "uniform" (every group not named in `per_stage` pruned to `target`, the
# paper's) or "sensitivity" (those groups' targets chosen on validation images for the same device FLOPs)
ALLOCATIONS = ("uniform", "sensitivity")
DISTILL_TEMPERATURE = 4.0  # Hinton et al. 2015's soft targets, the temperature of `distill`


def run_knobs(cfg: VariantConfig, profile: str) -> dict[str, Any]:
    """The pruning-run knobs of a variant: its own, else the profile budget's, else RUN_DEFAULTS."""
    return full_run({**PROFILES.get(profile).prune.knobs(), **{k: v for k, v in cfg.knobs if k in RUN_KNOBS}})


def schedule_of(knobs: Mapping[str, Any]) -> LevelSchedule:
    per_stage = dict(knobs["per_stage"])
    if knobs["output"] is not None:
        per_stage["output"] = float(knobs["output"])
    return LevelSchedule(float(knobs["target"]), per_stage, int(knobs["ramp_iterations"]),
                         int(knobs["iteration_steps"]), str(knobs["ramp"]), int(knobs["levels"]),
                         int(knobs["hold_iterations"]))


def finetune_config(knobs: Mapping[str, Any], schedule: LevelSchedule, base: BaseModelConfig) -> FinetuneConfig:
    """The fine-tuning of a pruning run: one epoch per level, seeded (the base model's seed, moved by the `replicate`
    knob) and in the precision of its base model."""
    return FinetuneConfig(epochs=schedule.levels, steps_per_epoch=schedule.level_steps,
                          batch_size=int(knobs["batch_size"]), lr=float(knobs["lr"]), momentum=float(knobs["momentum"]),
                          weight_decay=float(knobs["weight_decay"]), lr_schedule=str(knobs["lr_schedule"]),
                          seed=training_seed(base.seed, int(knobs[REPLICATE_KNOB])), precision=base.precision)


def check_run_knobs(knobs: Mapping[str, Any], base: BaseModelConfig) -> LevelSchedule:
    """The schedule of a pruning run's knobs (`run_knobs`), each checked for its type and range first."""
    for name in ("levels", "iteration_steps", "ramp_iterations"):
        knob_number(name, knobs[name], int, 1)
    knob_number("hold_iterations", knobs["hold_iterations"], int, 0)
    knob_number("target", knobs["target"], float, 0.0, 1.0)
    if knobs["output"] is not None:
        knob_number("output", knobs["output"], float, 0.0, 1.0)
    knob_number("threshold_drop", knobs["threshold_drop"], float, 0.0, 100.0)
    knob_number("distill", knobs["distill"], float, 0.0, 1.0)
    knob_number(REPLICATE_KNOB, knobs[REPLICATE_KNOB], int, 0, 1e6)
    check_training_knobs(knobs)
    if not isinstance(knobs["stop"], bool):
        raise UserError(f"knob stop must be true or false, got {knobs['stop']!r}")
    if knobs["allocation"] not in ALLOCATIONS:
        raise UserError(f"knob allocation must be one of {', '.join(ALLOCATIONS)}, got {knobs['allocation']!r}")
    schedule = schedule_of(knobs)
    finetune_config(knobs, schedule, base)
    return schedule


# ---------------------------------------------------------------------------------------------------- the run


def validation_accuracy(model: nn.Module, data: ImageData, val_x: torch.Tensor, val_y: torch.Tensor) -> float:
    """Top-1 accuracy on the validation images (the threshold's yardstick; the test set only reports)."""
    return accuracy(model, val_x, val_y, data.mean, data.std)


def threshold_level(snapshots: list[Mapping[str, Any]], threshold: float) -> int:
    """The paper's pick: the last level of the leading run of snapshots whose validation accuracy is >= threshold
    (sparsity is raised only while the accuracy holds); -1 when even the first is below it."""
    level = -1
    for s in snapshots:
        if s["val_accuracy"] < threshold:
            break
        level = int(s["level"])
    return level


class _PruneHooks(TrainHooks):
    """Drives the IncrementalPruner from the fine-tuning loop and snapshots the masked model after each level."""

    def __init__(self, model: nn.Module, pruner: IncrementalPruner, schedule: LevelSchedule, data: ImageData,
                 val: tuple[torch.Tensor, torch.Tensor], threshold: float, stop: bool) -> None:
        self.model, self.pruner, self.schedule, self.data, self.val = model, pruner, schedule, data, val
        self.threshold, self.stop = threshold, stop
        self.snapshots: list[dict[str, Any]] = []
        self._clock, self._before = time.perf_counter(), 0.0  # the run's seconds: this job's, and before a resume

    def seconds(self) -> float:
        """The run's training seconds so far, summed over resumes."""
        return self._before + time.perf_counter() - self._clock

    def before_step(self, step: int) -> None:
        self.pruner.step(step)

    def after_step(self, step: int) -> None:
        self.pruner.after_step()

    def end_epoch(self, epochs_done: int) -> bool:
        level = epochs_done - 1
        masks = self.pruner.masks
        val = validation_accuracy(self.model, self.data, *self.val)
        self.snapshots.append({
            "level": level,
            "fraction": self.schedule.level_fraction(level),
            "steps": epochs_done * self.schedule.level_steps,
            "seconds": self.seconds(),
            "val_accuracy": val,
            "masks": masks.to_dict(),
            "state_dict": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.model.state_dict().items()},
        })
        log.info("level %d/%d: channel sparsity %.3f, validation accuracy %.4f (threshold %.4f)", level + 1,
                 self.schedule.levels, masks.sparsity(), val, self.threshold)
        report_level(self.snapshots[-1])
        return self.stop and val < self.threshold

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict(), "snapshots": self.snapshots, "seconds": self.seconds()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pruner.load_state_dict(state["pruner"])
        self.snapshots = list(state["snapshots"])
        self._clock, self._before = time.perf_counter(), float(state.get("seconds", 0.0))
        for snap in self.snapshots:  # a resumed run's levels so far
            report_level(snap)


def report_level(snap: Mapping[str, Any], run_seconds: float | None = None) -> None:
    """Report a pruning level's validation accuracy and the run's seconds when it ended (`engine.intermediate`);
    a snapshot of a run stored before snapshots kept their seconds gets its share of the run's `run_seconds`."""
    level = int(snap["level"])
    seconds = snap.get("seconds", run_seconds)
    if isinstance(seconds, int | float):  # before the accuracy, which a study acts on at once
        intermediate.report(intermediate.PRUNE_SECONDS, level, float(seconds))
    intermediate.report(intermediate.PRUNE_LEVEL, level, float(snap["val_accuracy"]))


def run_key(cfg: VariantConfig, knobs: Mapping[str, Any]) -> str:
    keyed = {k: v for k, v in knobs.items() if k not in KEY_NEUTRAL or v != KEY_NEUTRAL[k]}
    return config_id({"method": "three_step/prune", "split": cfg.split, "base": cfg.base, "knobs": keyed})


def distillation_loss(teacher: nn.Module, weight: float, label_smoothing: float,
                      temperature: float = DISTILL_TEMPERATURE) -> LossFn:
    """The loss of a pruning run that distils the unpruned base model into the pruned one (Hinton, Vinyals & Dean
    2015, "Distilling the knowledge in a neural network"): `weight` x T^2 x KL(teacher || student) at temperature T
    plus (1 - weight) x the label-smoothed cross-entropy. The teacher is the frozen base, so the pruned model learns
    to keep the base's outputs (on the quick budget this did not beat the labels alone: BENCHMARKS.md).

    Args:
        teacher: the unpruned base model (frozen, in eval mode).
        weight: the distillation term's share, in [0, 1].
        label_smoothing: of the cross-entropy term.
        temperature: T of the soft targets.
    Returns:
        `loss_fn(model, x, y)` for `finetune`.
    """
    ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    teacher.eval().requires_grad_(False)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        with torch.no_grad():
            soft = torch.softmax(teacher(x).float() / temperature, dim=1)
        kl = nn.functional.kl_div(torch.log_softmax(logits.float() / temperature, dim=1), soft,
                                  reduction="batchmean")
        return weight * temperature ** 2 * kl + (1.0 - weight) * ce(logits, y)

    return loss


def pruning_run(cfg: VariantConfig, ctx: RunContext) -> dict[str, Any]:
    """The cached pruning run of `cfg` (all its snapshots), run now when missing; resumes an interrupted run."""
    if cfg.split in END_POINTS:
        raise UserError(f"three_step prunes the device part of a split; {cfg.split!r} has none to prune and "
                        "transmit: use the `original` method for the end points")
    knobs = run_knobs(cfg, ctx.profile.budget_name)
    key = run_key(cfg, knobs)
    path = ctx.cache / "models" / f"three_step-{key}.pt"
    run = ctx.cached_run(path, f"three_step's pruning run at {cfg.split}", lambda: _prune(cfg, ctx, knobs, key, path))
    for snap in run["snapshots"]:  # a run trained before reports its levels now (one trained here did as it went)
        share = float(snap["steps"]) / max(1, int(run["steps"]))
        report_level(snap, float(run["seconds"]) * share if "seconds" in run else None)
    return run


def _prune(cfg: VariantConfig, ctx: RunContext, knobs: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    base, _ = ctx.base(cfg.base)
    schedule = schedule_of(knobs)
    train_x, train_y, val_x, val_y = train_val_split(ctx.data, cfg.base.val_fraction, cfg.base.seed)
    device = pick_device()
    model = copy.deepcopy(base).to(device)
    base_val = validation_accuracy(model, ctx.data, val_x, val_y)
    threshold = accuracy_threshold_default(base_val, float(knobs["threshold_drop"]) / 100.0)
    device_part, _ = split(model, cfg.split)
    allocated, allocation_s = None, 0.0
    if knobs["allocation"] == "sensitivity":
        allocated, allocation_s = _allocation(cfg, ctx, model, schedule, val_x, val_y,
                                              path.with_suffix(".allocation.pt"))
        schedule = dataclasses.replace(schedule, level_targets=tuple(allocated))
    pruner = IncrementalPruner(device_part, schedule)
    hooks = _PruneHooks(model, pruner, schedule, ctx.data, (val_x, val_y), threshold, bool(knobs["stop"]))
    ft = finetune_config(knobs, schedule, cfg.base)
    weight = float(knobs["distill"])
    loss_fn = distillation_loss(copy.deepcopy(base).to(device), weight, ft.label_smoothing) if weight > 0 else None
    progress = ctx.progress

    def report(fraction: float, message: str) -> None:
        if progress:
            progress(fraction, f"three_step {cfg.split}: {message}")

    result = finetune(model, train_x, train_y, ctx.data.mean, ctx.data.std, ft, hooks=hooks, loss_fn=loss_fn,
                      checkpoint=path.with_suffix(".partial.pt"), progress=report, device=device)
    pruner.close()
    run = {"key": key, "split": cfg.split, "base_id": cfg.base.id, "knobs": dict(knobs),
           "base_val_accuracy": base_val, "threshold": threshold, "stopped": result.stopped,
           "seconds": result.seconds + allocation_s, "steps": result.steps, "snapshots": hooks.snapshots,
           "trained_on": result.trained_on}
    if allocated is not None:
        run["allocation"], run["allocation_seconds"] = allocated, allocation_s
    save_checkpoint(run, path)
    discard_checkpoint(path.with_suffix(".allocation.pt"))
    return run


def _allocation(cfg: VariantConfig, ctx: RunContext, model: nn.Module, schedule: LevelSchedule, val_x: torch.Tensor,
                val_y: torch.Tensor, path: Path) -> tuple[list[dict[str, float]], float]:
    """Per level, per-group targets that give the device FLOPs of that level's uniform targets, chosen on the
    sensitivity curves of the split (`engine.prune.allocation`: one greedy path, so each level's targets are at least
    the last's); groups that `per_stage` names keep theirs. Saved at `path` before the run trains, so that a resumed
    run follows the same targets. Returns the levels' targets and the seconds they took (the curves' included where
    this run measured them)."""
    saved = load_checkpoint(path)
    if saved is not None:
        return [dict(level) for level in saved["levels"]], float(saved["seconds"])
    started = time.perf_counter()
    curves = _sensitivity_curves(cfg, ctx, model, val_x, val_y)
    device_part = split(model, cfg.split)[0]
    groups = prunable_groups(device_part)
    named = dict(schedule.per_stage)
    fixed = {g.name for g in groups if any(k in named for k in (g.name, "output" if g.is_output else None, *g.stages))}
    curves = {name: curve for name, curve in curves.items() if name not in fixed}
    levels = []
    for k in range(schedule.levels):
        uniform = {g.name: target_for(g, schedule.target, named) * schedule.level_fraction(k) for g in groups}
        held = {name: uniform[name] for name in fixed}
        goal = device_flops(device_part, uniform, groups)
        chosen = allocate(curves, lambda s, held=held: device_flops(device_part, {**held, **s}, groups), goal)
        levels.append({**held, **chosen})
    seconds = time.perf_counter() - started
    log.info("sensitivity allocation at %s in %.0f s: %s", cfg.split, seconds,
             "; ".join(", ".join(f"{n} {v:.3f}" for n, v in sorted(level.items()) if v) for level in levels))
    save_checkpoint({"levels": levels, "seconds": seconds}, path)
    return levels, seconds


def _sensitivity_curves(cfg: VariantConfig, ctx: RunContext, model: nn.Module, val_x: torch.Tensor,
                        val_y: torch.Tensor) -> dict[str, list[tuple[float, float]]]:
    """The split's sensitivity curves on the first SENSITIVITY_IMAGES validation images, cached per base model and
    split (every pruning run there shares them)."""
    key = config_id({"method": "three_step/sensitivity", "split": cfg.split, "base": cfg.base,
                     "images": SENSITIVITY_IMAGES, "steps": list(SENSITIVITY_STEPS)})
    path = ctx.cache / "models" / f"three_step-sensitivity-{key}.pt"
    x, y = val_x[:SENSITIVITY_IMAGES], val_y[:SENSITIVITY_IMAGES]

    def measure() -> dict[str, Any]:
        started = time.perf_counter()
        curves = sensitivity(model, lambda m: split(m, cfg.split)[0],
                             lambda m: accuracy(m, x, y, ctx.data.mean, ctx.data.std))
        out = {"curves": {k: [list(p) for p in v] for k, v in curves.items()},
               "seconds": time.perf_counter() - started}
        save_checkpoint(out, path)
        return out

    run = ctx.cached_run(path, f"the sensitivity of the groups at {cfg.split}", measure)
    return {k: [(float(s), float(loss)) for s, loss in v] for k, v in run["curves"].items()}


@dataclass
class PrunedSplit:
    """A kept snapshot: the masked whole model, its masks and the physically pruned deployed parts."""

    masked_model: nn.Module
    masks: ChannelMasks
    device: nn.Module  # pruned channels removed
    server: nn.Module  # first layer adapted to the channels still sent
    info: dict[str, Any] = field(default_factory=dict)  # row columns describing the snapshot


def select_snapshot(run: Mapping[str, Any], which: int | str) -> dict[str, Any] | None:
    """Snapshot `which` (a level, or "threshold") of a run; None stands for the unpruned base (threshold pick when
    no level holds the accuracy)."""
    snaps = run["snapshots"]
    if which == "threshold":
        level = threshold_level(snaps, run["threshold"])
        return snaps[level] if level >= 0 else None
    try:
        level = int(which)
    except (TypeError, ValueError):
        raise UserError(f"snapshot must be a level number or 'threshold', got {which!r}") from None
    levels = int(run["knobs"]["levels"])
    if not 0 <= level < levels:
        raise UserError(f"snapshot {level} is out of range: this run has levels 0..{levels - 1}")
    if level >= len(snaps):
        raise UserError(f"snapshot {level} was not reached: the threshold-driven run stopped after level "
                        f"{len(snaps) - 1}, below the validation threshold {run['threshold']:.4f}")
    return snaps[level]


def unpruned_split(cfg: VariantConfig, ctx: RunContext) -> PrunedSplit:
    """Knob snapshot="none": the base model's own parts, no pruning run (feature codings compared alone, as in the
    paper's Fig. 5)."""
    base, _ = ctx.base(cfg.base)
    model = copy.deepcopy(base).eval()
    device, server = split(model, cfg.split)
    masks = ChannelMasks({g.name: torch.ones(g.channels, dtype=torch.bool) for g in prunable_groups(device)})
    info = {"level": -1, "sparsity": 0.0, "output_sparsity": 0.0}
    return PrunedSplit(model, masks, device, server, info)


def pruned_split(cfg: VariantConfig, ctx: RunContext) -> PrunedSplit:
    """The pruned parts of a `three_step` variant, from its (cached) pruning run."""
    if cfg.knob("snapshot") == "none":
        return unpruned_split(cfg, ctx)
    run = pruning_run(cfg, ctx)
    snap = select_snapshot(run, cfg.knob("snapshot", "threshold"))
    base, _ = ctx.base(cfg.base)
    model = make_model(cfg.base, ctx.data)
    model.load_state_dict(base.state_dict() if snap is None else snap["state_dict"])
    model.eval()
    device_part, server_part = split(model, cfg.split)
    groups = prunable_groups(device_part)
    if snap is None:
        masks = ChannelMasks({g.name: torch.ones(g.channels, dtype=torch.bool) for g in groups})
    else:
        masks = ChannelMasks.from_dict(snap["masks"])
    device, server = remove_pruned_channels(device_part, masks, server_part)
    sent = [g.name for g in groups if g.is_output]
    pick = threshold_level(run["snapshots"], run["threshold"])
    level = -1 if snap is None else int(snap["level"])
    info = {
        "level": level,
        "levels": int(run["knobs"]["levels"]),
        "target_sparsity": 0.0 if snap is None else float(run["knobs"]["target"]) * snap["fraction"],
        "sparsity": masks.sparsity(),
        "output_sparsity": masks.sparsity_of(sent),
        "val_accuracy": run["base_val_accuracy"] if snap is None else snap["val_accuracy"],
        "val_threshold": run["threshold"],
        "threshold_pick": level == pick,
        "prune_steps": 0 if snap is None else int(snap["steps"]),
        "prune_seconds": run["seconds"],
        "prune_run": run["key"],
        "prune_trained_on": run.get("trained_on"),
    }
    return PrunedSplit(model, masks, device.eval(), server.eval(), info)


# ---------------------------------------------------------------------------------------------------- row


def measure_row(cfg: VariantConfig, ctx: RunContext, device: nn.Module, server: nn.Module, coding: str = "none",
                **extra: Any) -> dict:
    """A results row for deployed (pruned) parts: profile_parts figures, coded bits, test and validation accuracy
    through the coding, the base's device FLOPs at the same split beside them, and `extra` columns."""
    start = time.perf_counter()
    data = ctx.data
    coded = FEATURE_CODINGS.get(coding).measure(device, server, cfg, ctx)
    input_shape = (data.channels, *data.image_size)
    prof = profile_parts(coded.device, coded.server, cfg.split, input_shape, data.num_classes)
    base, _ = ctx.base(cfg.base)
    base_device, _ = split(base, cfg.split)
    base_flops = count_flops(base_device.eval(), torch.zeros(1, *input_shape))
    return base_row(cfg, ctx, accuracy=coded.accuracy, deployed_val_accuracy=coded.val_accuracy,
                    eval_seconds=time.perf_counter() - start, **prof,
                    **coded.bits, base_device_flops=base_flops,
                    flops_reduction=base_flops / prof["device_flops"] if prof["device_flops"] else None,
                    **coded.extra, **extra)


# ---------------------------------------------------------------------------------------------------- method


class ThreeStep:
    """Shao & Zhang 2020: split, incremental l2 channel pruning of the device part with activation pruning of its
    output, feature coding (`encoder` knob: "none" for 8-bit + Huffman, "two_step" for the learned encoder)."""

    # a search's first choice at every split: unpruned, 8 bits + Huffman (measured in seconds, trains nothing)
    probe = {"three_step.snapshot": "none", "three_step.coding": "uniform", "three_step.bits": 8}

    defaults_by = ("encoder",)  # a variant added by hand starts from the grid's variant with its encoder

    def variants(self, base: BaseModelConfig, splits: list[str]) -> list[VariantConfig]:
        """One pruning run per split in the profile's budget, and one more per activation-pruning target of its
        `output_sparsities` axis (the split output pruned harder than the body), one variant per snapshot level
        (8-bit + Huffman), then the whole framework per split: the threshold snapshot with the learned two-step
        encoder (`enc_*` defaults). Level-major (every run's first level before any run's second), so that parallel
        workers start different runs first and later levels find their run trained, not in flight."""
        profile = profile_of(base)
        budget = profile.prune
        splits = [s for s in splits if s not in END_POINTS]
        runs = grid_runs(profile)
        pruned = [VariantConfig.make("three_step", s, base, encoder="none", bits=8, snapshot=k, **run)
                  for k in range(budget.levels) for run in runs for s in splits]
        encoding = profile_of(base).encoding_knobs()
        encoded = [VariantConfig.make("three_step", s, base, encoder="two_step", snapshot="threshold",
                                      **encoding, **budget.knobs()) for s in splits]
        return pruned + encoded

    def followups(self, base: BaseModelConfig, rows: Iterable[Mapping[str, Any]]) -> list[VariantConfig]:
        """The three steps crossed, as the paper's brute force fills its lookup table: every pruning snapshot of
        `rows` (this base model's measured 8-bit rows) of a run of the profile's grid (`grid_runs`: runs added by
        hand with other knobs are not crossed) whose validation accuracy holds its run's threshold, and the
        unpruned split wherever a snapshot was measured, each with every coding the base's profile names
        (`Profile.codings`). Known only once the pruning runs are measured: a sweep asks again as rows arrive.

        A crossed variant that a measured `three_step` row at its split provably dominates is left out: that row
        meets the default validation threshold with no more device FLOPs than the variant's snapshot and no more bits
        than its coding can ever send (`FeatureCoding.min_bits`), one of them strictly less. So is a learned coding
        expected to miss the threshold (a stated rule, not a proof): at its split, a learned coding that reaches at
        least as far (`reaches_no_further`: no fewer fixed-length bits, trained no less), measured on a snapshot
        with no fewer device FLOPs (a coding loses more the more is pruned), lost more validation accuracy against
        that snapshot's 8-bit row than the variant's snapshot holds above the threshold, plus the half point a
        coding may win back (`WIN_BACK`). Per split, the unpruned split's codings come first (by the rule's premise a
        coding loses there no more than on any snapshot: where it misses by far, nothing is tried on them), then the
        snapshots' fewest device FLOPs first, then fewest bits at best, so those likeliest to dominate the rest run
        first.

        Args:
            base: the base model; its profile names the codings.
            rows: measured rows (any method or base: the others are ignored).
        Returns:
            the crossed variants, each once, grouped by split in that order.
        """
        base_id = base.id  # a hash of the config: once, not once per row
        rows = [r for r in rows if r.get("base_id") == base_id and r.get("method") == "three_step"]
        profile, candidates, splits = profile_of(base), {}, []
        grid = [full_run(run) for run in grid_runs(profile)]
        for row in rows:
            level, holds = _snapshot_level(row, base_id)
            if level is None:
                continue
            splits += [row["split"]] if row["split"] not in splits else []
            run = {k: v for k, v in row["knobs"].items() if k in RUN_KNOBS}
            base_val = _number(row.get("base_val_accuracy"))  # margins over the default threshold (the sweep's)
            need = accuracy_threshold_default(base_val)
            if holds and full_run(run) in grid:
                for c in profile.codings:
                    v = self._coded(row["split"], base, {**run, "snapshot": level}, c)
                    candidates.setdefault(v.id, (v, _number(row.get("device_flops")),
                                                 _number(row.get("val_accuracy")) - need))
            for c in profile.codings:
                v = self._coded(row["split"], base, {"snapshot": "none"}, c)
                candidates.setdefault(v.id, (v, _number(row.get("base_device_flops")), base_val - need))
        points, lost = _qualifying_points(rows), _learned_losses(rows)
        out = []
        for v, flops, margin in candidates.values():
            bits = FEATURE_CODINGS.get(str(v.knob("encoder", "none"))).min_bits(v)
            if not (provably_dominated(flops, bits, points.get(v.split, []))
                    or _expected_to_miss(v, flops, margin, lost.get(v.split, []), profile.encoding_epochs)):
                out.append((splits.index(v.split), v.knob("snapshot") != "none", flops, bits, v))
        return [v for *_, v in sorted(out, key=lambda t: t[:4])]

    def suggest(self, chooser: Chooser, base: BaseModelConfig, split: str) -> VariantConfig:
        """A search's choice of the three steps at `split` from the profile's `SearchSpace`: a pruning run (target
        sparsity, held iterations per level, the split output's own target or none) and one of its snapshot levels
        or the run's own pick (`threshold`: the deepest level whose validation accuracy holds the base's minus
        `threshold_drop` points, as the grid crosses its codings), or no pruning; then a coding (uniform bits +
        Huffman, the two-step encoder's d and bits, or the vector codebook's size). The knobs are those of the
        grid's variants, so a choice the grid measured is read from the results store, not trained again.

        Args:
            chooser: asks each choice (an Optuna trial); base: the base model, whose profile sets the choices;
            split: an inner split point.
        Returns:
            the chosen variant.
        """
        profile = profile_of(base)
        space, budget = profile.search, profile.prune
        pruning: dict[str, Any] = {"snapshot": "none"}
        level = chooser.suggest_categorical("three_step.snapshot",
                                            ["none", "threshold", *map(str, range(budget.levels))])
        if level != "none":
            run = budget.knobs()
            run["target"] = float(chooser.suggest_categorical("three_step.target", space.targets or (budget.target,)))
            run["hold_iterations"] = int(chooser.suggest_categorical("three_step.hold",
                                                                      space.holds or (budget.hold_iterations,)))
            if space.outputs:
                output = chooser.suggest_categorical("three_step.output", ["body", *map(str, space.outputs)])
                if output != "body":
                    run["output"] = float(output)
            pruning = {**run, "snapshot": level if level == "threshold" else int(level)}
        coding = chooser.suggest_categorical("three_step.coding", ["uniform", "two_step", "vector"])
        if coding == "uniform":
            knobs = {"encoder": "none", "bits": int(chooser.suggest_categorical("three_step.bits",
                                                                                  sorted(space.bits, reverse=True)))}
            return self._coded(split, base, pruning, tuple(knobs.items()))
        if coding == "two_step":
            knobs = {"encoder": "two_step", "enc_d": int(chooser.suggest_categorical("three_step.enc_d", space.enc_d)),
                     "enc_bits": int(chooser.suggest_categorical("three_step.enc_bits", space.enc_bits))}
        else:
            knobs = {"encoder": "two_step", "enc_quantizer": "vector",
                     "enc_codebook": int(chooser.suggest_categorical("three_step.codebook", space.codebooks))}
        return self._coded(split, base, pruning, tuple({**knobs, **_encoder_training(chooser, profile)}.items()))

    def parents(self, cfg: VariantConfig) -> dict[str, VariantConfig]:
        """What a pruned and coded variant is made of, to set beside it: "unpruned", its coding on the base's own
        split; "uncoded", its snapshot sent 8-bit + Huffman; "neither", the `original` split sent 8-bit.

        Args:
            cfg: a `three_step` variant.
        Returns:
            the parents by role; {} unless `cfg` is both pruned and coded otherwise than 8-bit + Huffman.
        """
        knobs = dict(cfg.knobs)
        if knobs.get("snapshot", "threshold") == "none" or (knobs.get("encoder", "none") == "none"
                                                           and knobs.get("bits", 8) == 8):
            return {}
        run = {k: v for k, v in knobs.items() if k in RUN_KNOBS}
        coding = {k: v for k, v in knobs.items() if k not in RUN_KNOBS and k != "snapshot"}
        return {
            "unpruned": VariantConfig.make("three_step", cfg.split, cfg.base, **coding, snapshot="none"),
            "uncoded": VariantConfig.make("three_step", cfg.split, cfg.base, **run, snapshot=knobs.get("snapshot",
                                          "threshold"), encoder="none", bits=8),
            "neither": VariantConfig.make("original", cfg.split, cfg.base, bits=8),
        }

    @staticmethod
    def shared_part(cfg: VariantConfig, profile: str) -> str | None:
        """The pruning run a variant trains or reads (`run_key`), which every variant of its run shares; None when
        it prunes nothing. A worker does not start a variant whose run another job is training while it has other
        work (it would wait on that run's lock)."""
        if cfg.knob("snapshot", "threshold") == "none" or cfg.split in END_POINTS:
            return None
        return run_key(cfg, run_knobs(cfg, PROFILES.get(profile).budget_name))

    @staticmethod
    def canonical(cfg: VariantConfig) -> VariantConfig:
        """`cfg` written one way, so that a variant added by hand has the id the grid or a search gives it: an
        unpruned one (`snapshot="none"`) carries no pruning run's knobs, and its coding's knobs are written as the
        coding writes them (`FeatureCoding.canonical`).

        Args:
            cfg: a `three_step` variant.
        Returns:
            the same configuration, canonically spelt.
        """
        knobs = dict(cfg.knobs)
        if knobs.get("snapshot") == "none":
            knobs = {k: v for k, v in knobs.items() if k not in RUN_KNOBS}
        knobs = FEATURE_CODINGS.get(str(knobs.get("encoder", "none"))).canonical(knobs)
        return VariantConfig.make("three_step", cfg.split, cfg.base, **knobs)

    @staticmethod
    def _coded(split: str, base: BaseModelConfig, pruning: Mapping[str, Any],
               coding: tuple[tuple[str, Any], ...]) -> VariantConfig:
        knobs = {**pruning, **dict(coding)}
        if is_learned(knobs["encoder"]):  # the profile's way to train an encoder
            knobs = {**profile_of(base).encoding_knobs(), **knobs}
        return ThreeStep.canonical(VariantConfig.make("three_step", split, base, **knobs))

    def check(self, cfg: VariantConfig, profile: str) -> None:
        """The pruning run's knobs (RUN_KNOBS over the profile's budget) and `snapshot` (a level, "threshold" or
        "none": no pruning), `bits` of the 8-bit + Huffman coding, and the `enc_*` or `jscc_*` knobs of the encoder."""
        check_knob_names(cfg, [*RUN_KNOBS, "snapshot", "encoder", "bits"], _coding_prefixes())
        refuse_end_points(cfg, "prunes and codes a split feature")
        encoder = cfg.knob("encoder", "none")
        coding = FEATURE_CODINGS.get(str(encoder))
        knob_number("bits", cfg.knob("bits", 8), int, 1, 16)
        knob_number(REPLICATE_KNOB, cfg.knob(REPLICATE_KNOB, 0), int, 0, 1e6)
        snapshot = cfg.knob("snapshot", "threshold")
        if snapshot != "none":
            schedule = check_run_knobs(run_knobs(cfg, profile), cfg.base)
            level = int(snapshot) if isinstance(snapshot, str) and snapshot.isdigit() else snapshot
            if snapshot != "threshold" and (isinstance(level, bool) or level not in range(schedule.levels)):
                raise UserError(f"knob snapshot is a level from 0 to {schedule.levels - 1}, 'threshold' or 'none', "
                                f"got {snapshot!r}")
        own = coding.prefix
        stray = [n for n, _ in cfg.knobs if n.startswith(_coding_prefixes()) and not (own and n.startswith(own))]
        if stray:
            raise UserError(f"knob {stray[0]} does not apply to encoder={encoder}")
        coding.check(cfg, profile)

    def run(self, cfg: VariantConfig, ctx: RunContext) -> dict:
        pruned = pruned_split(cfg, ctx)
        return measure_row(cfg, ctx, pruned.device, pruned.server, str(cfg.knob("encoder", "none")), **pruned.info)

    def deploy(self, cfg: VariantConfig, ctx: RunContext) -> Deployed:
        pruned = pruned_split(cfg, ctx)
        return FEATURE_CODINGS.get(str(cfg.knob("encoder", "none"))).deploy(pruned.device, pruned.server, cfg, ctx)


def _encoder_training(chooser: Chooser, profile: Profile) -> dict[str, Any]:
    """A search's choice of how a learned encoder trains: the profile's own setting, or one of its search space's
    others (`SearchSpace.enc_training`, such as the crossing's cheap one); no choice when there is none."""
    own = profile.encoding_knobs()
    settings = [(own["enc_epochs"], own["enc_backbone"]),
                *[t for t in profile.search.enc_training if t != (own["enc_epochs"], own["enc_backbone"])]]
    if len(settings) == 1:
        return own
    labels = {f"{epochs}:{backbone}": (epochs, backbone) for epochs, backbone in settings}
    epochs, backbone = labels[chooser.suggest_categorical("three_step.enc_training", list(labels))]
    return {"enc_epochs": int(epochs), "enc_backbone": str(backbone)}


def _snapshot_level(row: Mapping[str, Any], base_id: str) -> tuple[int | None, bool]:
    """For a measured 8-bit + Huffman snapshot row of the base model `base_id`: its pruning level and whether its
    validation accuracy holds its run's threshold; (None, False) for any other row."""
    knobs = row.get("knobs") or {}
    if (row.get("method") != "three_step" or row.get("base_id") != base_id or knobs.get("encoder", "none") != "none"
            or knobs.get("bits", 8) != 8 or knobs.get(REPLICATE_KNOB, 0)):  # a replicate is not crossed again
        return None, False
    level, val, need = knobs.get("snapshot"), row.get("val_accuracy"), row.get("val_threshold")
    if isinstance(level, bool) or not isinstance(level, int):
        return None, False
    return level, val is not None and need is not None and val >= need


def grid_runs(profile: Profile) -> list[dict[str, Any]]:
    """The pruning runs of a profile's grid: its budget's, and one per activation-pruning target of the split output
    (`Profile.output_sparsities`).

    Args:
        profile: the profile.
    Returns:
        each run's knobs, as its variants carry them.
    """
    budget = profile.prune.knobs()
    return [budget, *({**budget, "output": o} for o in profile.output_sparsities)]


def full_run(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run's knobs over `RUN_DEFAULTS`, spelt one way (a stored row's lists as tuples), to compare runs.

    Args:
        run: a run's knobs (a variant's, a budget's, or a stored row's read back from JSON).
    Returns:
        every run knob, `per_stage` as sorted (name, sparsity) pairs.
    """
    knobs = {**RUN_DEFAULTS, **run}
    knobs["per_stage"] = tuple(sorted((str(k), float(v)) for k, v in dict(knobs["per_stage"]).items()))
    return knobs


def _number(value: Any) -> float:
    """A row's figure as a float; 0 when missing (a lower bound that proves nothing)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value == value else 0.0


def _qualifying_points(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per split, (device FLOPs, actual bits) of the rows whose validation accuracy meets the default threshold below
    their base model's (`engine.pareto.DEFAULT_ACCURACY_DROP`)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        val, base_val = r.get(DECISION_COLUMN), r.get("base_val_accuracy")
        flops, bits = r.get("device_flops"), r.get("bits_actual")
        if any(not isinstance(x, int | float) or x != x for x in (val, base_val, flops, bits)):
            continue
        if val >= accuracy_threshold_default(float(base_val)):
            out.setdefault(str(r["split"]), []).append((float(flops), float(bits)))
    return out


def _learned_losses(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[EncodingConfig, float, float]]]:
    """Per split, each measured learned coding (`enc_*` knobs) of these `three_step` rows: its encoding, the device
    FLOPs of the snapshot it coded (the row's less its encoder's) and the validation accuracy it lost against that
    snapshot's 8-bit row (the unpruned model's for `snapshot="none"`)."""
    out: dict[str, list[tuple[EncodingConfig, float, float]]] = {}
    for r in rows:
        knobs = r.get("knobs") or {}
        snapshot = r.get("val_accuracy") if knobs.get("snapshot") != "none" else r.get("base_val_accuracy")
        val, flops = r.get(DECISION_COLUMN), r.get("device_flops")
        if not is_learned(knobs.get("encoder", "none")) or knobs.get(REPLICATE_KNOB, 0) or any(
                not isinstance(x, int | float) or x != x for x in (snapshot, val, flops)):
            continue
        out.setdefault(str(r["split"]), []).append((EncodingConfig.from_knobs(knobs),
                                                     float(flops) - _number(r.get("encoder_flops")),
                                                     float(snapshot) - float(val)))
    return out


def _expected_to_miss(v: VariantConfig, flops: float, margin: float,
                      lost: Iterable[tuple[EncodingConfig, float, float]], default_epochs: int) -> bool:
    """Whether the learned coding of `v`, on a snapshot of `flops` device FLOPs `margin` above the validation
    threshold, is expected to miss it: a coding at its split that reaches at least as far, on a snapshot with no
    fewer device FLOPs (no less of the model kept), lost more than that margin and `WIN_BACK` (see
    `ThreeStep.followups`). Never for a coding that is not learned."""
    if not is_learned(v.knob("encoder", "none")):
        return False
    own = EncodingConfig.from_knobs(v.knobs)
    return any(loss > margin + WIN_BACK and flops <= kept * (1 + 1e-9) and reaches_no_further(own, enc, default_epochs)
               for enc, kept, loss in lost)


def _coding_prefixes() -> tuple[str, ...]:
    """The knob prefixes of every registered coding (a variant may carry only its own coding's)."""
    return tuple(sorted({p for name in FEATURE_CODINGS if (p := FEATURE_CODINGS.get(name).prefix)}))


METHODS.add("three_step", ThreeStep())
