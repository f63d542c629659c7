"""Fine-tuning loop for pruning and encoders: a step budget (epochs of `steps_per_epoch` steps), SGD with a constant
or cosine learning rate, batched uint8 augmentation, optional hooks around each optimizer step and at each epoch's
end (the pruner of Shao & Zhang 2020 runs there), and a checkpoint at every epoch boundary so a killed run resumes
where it was. Seeded: the same call gives the same weights, interrupted or not.

An epoch here is a checkpoint interval, not a pass over the data: its batches come from fresh seeded permutations
of the training images (full batches only; the remainder of a permutation is dropped), so resuming needs only the
generator's state at the boundary."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.data import augment_batch, normalize
from engine.errors import UserError
from engine.training import (
    Hooks,
    Loop,
    Optimizer,
    Progress,
    Scheduler,
    discard_checkpoint,
    pick_device,
    run_loop,
)

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
LR_SCHEDULES = ("constant", "cosine", "cosine_restarts")


@dataclass(frozen=True)
class FinetuneConfig:
    """The budget and optimiser of one fine-tuning run. `steps_per_epoch=None` means one pass over the data
    (floor(N / batch_size) full batches)."""

    epochs: int = 1
    steps_per_epoch: int | None = None
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    lr_schedule: str = "constant"
    augment: bool = True
    seed: int = 0
    precision: str = "auto"  # engine.config.PRECISIONS: the base model's

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or (self.steps_per_epoch is not None and self.steps_per_epoch < 1):
            raise UserError("fine-tuning epochs, steps per epoch and batch size must be positive integers")
        if not self.lr > 0:
            raise UserError(f"learning rate must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")

    def steps(self, n_images: int) -> int:
        """Optimizer steps per epoch for a training set of `n_images`."""
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        return max(1, n_images // min(self.batch_size, n_images))


class TrainHooks:
    """Callbacks of `finetune`. `before_step`/`after_step` get the global step index (0-based, counted across
    epochs and resumes); `end_epoch` gets the number of epochs done and returns True to stop training there. The
    state is saved with every checkpoint and given back to `load_state_dict` on resume."""

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def end_epoch(self, epochs_done: int) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@dataclass
class FinetuneResult:
    epochs: int  # epochs done
    steps: int  # optimizer steps done
    seconds: float  # training time, summed over resumes
    stopped: bool  # a hook stopped training before the budget ran out
    resumed_from: int  # the epoch a checkpoint resumed from (0: fresh start)
    trained_on: list[dict[str, Any]] = field(default_factory=list)  # engine.provenance environments, over resumes


def _batches(n: int, steps: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` index batches of min(batch_size, n) drawn from consecutive seeded permutations of range(n)."""
    b = min(batch_size, n)
    perm, pos = torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if pos + b > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        yield perm[pos : pos + b]
        pos += b


def lr_factor(schedule: str, total_steps: int, epoch_steps: int) -> Callable[[int], float]:
    """The learning rate of step i as a fraction of the configured one: constant; one cosine decay over the whole
    run; or a cosine decay within each epoch ("cosine_restarts", SGDR of Loshchilov & Hutter 2017), so that every
    epoch's end (a pruning snapshot) is reached at a small rate."""
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if schedule == "cosine_restarts":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * (step % epoch_steps) / epoch_steps))
    return lambda step: 1.0


class _Finetuning(Hooks):
    """`finetune`'s hooks: SGD with Nesterov momentum and `lr_factor`'s schedule, full batches from consecutive
    seeded permutations (augmented or not), and the caller's `TrainHooks` around each step and at each epoch's end."""

    def __init__(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, cfg: FinetuneConfig, hooks: TrainHooks, loss_fn: LossFn,
                 parameters: list[nn.Parameter] | None, device: torch.device) -> None:
        self.model, self.train_x, self.train_y, self.cfg, self.hooks = model, train_x, train_y, cfg, hooks
        self.loss_fn, self.parameters, self.device = loss_fn, parameters, device
        self.mean, self.std = mean.to(device), std.to(device)
        self.steps_per_epoch = cfg.steps(len(train_x))

    def build(self) -> tuple[nn.Module, Optimizer, Scheduler]:
        cfg, model = self.cfg, self.model
        model.to(self.device, memory_format=torch.channels_last)  # in place: hooks on the parameters stay valid
        params = self.parameters if self.parameters is not None else [p for p in model.parameters()
                                                                      if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                                    weight_decay=cfg.weight_decay)
        factor = lr_factor(cfg.lr_schedule, cfg.epochs * self.steps_per_epoch, self.steps_per_epoch)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def prepare(self) -> None:
        self.x_dev, self.y_dev = self.train_x.to(self.device), self.train_y.to(self.device)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in _batches(len(self.train_x), self.steps_per_epoch, self.cfg.batch_size, self.generator):
            idx = idx.to(self.device)
            xb, yb = self.x_dev.index_select(0, idx), self.y_dev.index_select(0, idx)
            if self.cfg.augment:
                xb = augment_batch(xb, self.generator)
            yield normalize(xb, self.mean, self.std).contiguous(memory_format=torch.channels_last), yb

    def before_step(self, step: int) -> None:
        self.hooks.before_step(step)
        if not self.model.training:  # a hook evaluated the model
            self.model.train()

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(self.model, *batch)

    def after_step(self, step: int) -> None:
        self.hooks.after_step(step)

    def end_epoch(self, epochs_done: int) -> bool:
        return self.hooks.end_epoch(epochs_done)

    def state_dict(self) -> dict[str, Any]:
        return self.hooks.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.hooks.load_state_dict(state)


def finetune(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             cfg: FinetuneConfig, *, hooks: TrainHooks | None = None, checkpoint: Path | None = None,
             loss_fn: LossFn | None = None, parameters: list[nn.Parameter] | None = None,
             progress: Progress | None = None, device: torch.device | None = None) -> FinetuneResult:
    """Train `model` (in place, on `device`, default CUDA when available) on uint8 images for `cfg.epochs` epochs.

    With `checkpoint`, the model, optimizer, scheduler, generator and hooks' state are saved there atomically after
    every epoch but the last, and a later call with the same arguments resumes from it; the file is removed when the
    run ends.

    Args:
        model, train_x, train_y, mean, std: the model and its uint8 training images, labels and normalisation.
        cfg: the budget and optimiser.
        hooks: called around each step and at each epoch's end (the pruner).
        checkpoint: where the resumable state goes.
        loss_fn: `loss_fn(model, x, y)`; default label-smoothed cross-entropy of `model(x)`.
        parameters: what SGD with Nesterov momentum optimises; default all that require grad.
        progress: called with (fraction done, message).
        device: default CUDA when available.
    Returns:
        Epochs and steps done, seconds, whether a hook stopped it, where it resumed from, environments.
    """
    device = device or pick_device()
    if len(train_x) == 0:
        raise UserError("no training images to fine-tune on")
    if loss_fn is None:
        ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

        def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return ce(m(x), y)

    run = _Finetuning(model, train_x, train_y, mean, std, cfg, hooks or TrainHooks(), loss_fn, parameters, device)
    # the batch generator only: fine-tuning never seeded torch's global generator
    loop = Loop("fine-tuning", device, cfg.epochs, run.steps_per_epoch, cfg.seed, seed_global=False,
                precision=cfg.precision, checkpoint=checkpoint, key=asdict(cfg), progress=progress,
                report_steps=True)
    done = run_loop(loop, run)
    discard_checkpoint(checkpoint)
    model.to(memory_format=torch.contiguous_format).eval()
    return FinetuneResult(done.epochs, done.steps, done.seconds, done.stopped, done.resumed_from, done.trained_on)
