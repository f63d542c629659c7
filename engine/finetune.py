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
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.data import augment_batch, normalize
from engine.errors import UserError
from engine.provenance import add_environment
from engine.train import Progress, autocast, load_checkpoint, pick_device, save_checkpoint

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


def finetune(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             cfg: FinetuneConfig, *, hooks: TrainHooks | None = None, checkpoint: Path | None = None,
             loss_fn: LossFn | None = None, parameters: list[nn.Parameter] | None = None,
             progress: Progress | None = None, device: torch.device | None = None) -> FinetuneResult:
    """Train `model` (in place, on `device`, default CUDA when available) on uint8 images for `cfg.epochs` epochs.

    `loss_fn(model, x, y)` defaults to label-smoothed cross-entropy of `model(x)`; `parameters` (default: all that
    require grad) are optimised by SGD with Nesterov momentum. With `checkpoint`, the model, optimizer, scheduler,
    generator and hooks' state are saved there atomically after every epoch but the last, and a later call with the
    same arguments resumes from it; the file is removed when the run ends."""
    device = device or pick_device()
    hooks = hooks or TrainHooks()
    generator = torch.Generator().manual_seed(cfg.seed)
    model.to(device, memory_format=torch.channels_last)  # in place: hooks on the parameters stay valid
    mean_d, std_d = mean.to(device), std.to(device)
    n = len(train_x)
    if n == 0:
        raise UserError("no training images to fine-tune on")
    steps_per_epoch = cfg.steps(n)
    total = cfg.epochs * steps_per_epoch
    params = parameters if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.lr_schedule, total, steps_per_epoch))
    if loss_fn is None:
        ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

        def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return ce(m(x), y)

    epoch, seconds, stopped, resumed_from = 0, 0.0, False, 0
    saved = load_checkpoint(checkpoint) if checkpoint is not None else None
    if saved is not None and saved.get("config") != asdict(cfg):
        log.warning("fine-tuning checkpoint %s was written for another budget: starting over", checkpoint.name)
        saved = None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        hooks.load_state_dict(saved["hooks"])
        epoch, seconds, stopped = int(saved["epoch"]), float(saved["seconds"]), bool(saved["stopped"])
        resumed_from = epoch
        log.info("resuming fine-tuning at epoch %d/%d", epoch, cfg.epochs)
    trained_on = add_environment(saved.get("trained_on") if saved is not None else None, device)
    x_dev, y_dev = train_x.to(device), train_y.to(device)
    while epoch < cfg.epochs and not stopped:
        start = time.perf_counter()
        model.train()
        for i, idx in enumerate(_batches(n, steps_per_epoch, cfg.batch_size, generator)):
            step = epoch * steps_per_epoch + i
            idx = idx.to(device)
            xb, yb = x_dev.index_select(0, idx), y_dev.index_select(0, idx)
            if cfg.augment:
                xb = augment_batch(xb, generator)
            xb = normalize(xb, mean_d, std_d).contiguous(memory_format=torch.channels_last)
            hooks.before_step(step)
            if not model.training:
                model.train()
            with autocast(device, cfg.precision):
                loss = loss_fn(model, xb, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            hooks.after_step(step)
            if progress and i % 10 == 0:
                progress((step + 1) / total, f"step {step + 1}/{total} loss {loss.item():.3f}")
        epoch += 1
        stopped = bool(hooks.end_epoch(epoch))
        seconds += time.perf_counter() - start
        if progress:
            progress(epoch / cfg.epochs, f"epoch {epoch}/{cfg.epochs}{' (stopped)' if stopped else ''}")
        if checkpoint is not None and epoch < cfg.epochs and not stopped:
            save_checkpoint({"config": asdict(cfg), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                             "hooks": hooks.state_dict(), "epoch": epoch, "seconds": seconds, "stopped": stopped,
                             "trained_on": trained_on},
                            checkpoint)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
        checkpoint.with_suffix(checkpoint.suffix + ".sha256").unlink(missing_ok=True)
    model.to(memory_format=torch.contiguous_format).eval()
    return FinetuneResult(epoch, epoch * steps_per_epoch, seconds, stopped, resumed_from, trained_on)
