"""The one training loop of the engine, and the primitives every training shares (device, seeding, autocast,
checksummed checkpoints).

`run_loop(loop, hooks)` seeds, lets the hooks build the model, optimizer and scheduler, resumes from the loop's
checkpoint, then runs `loop.epochs` epochs of `loop.steps_per_epoch` optimizer steps under the precision's autocast,
checkpointing after every epoch but the last and reporting progress. A training (base model, pruning fine-tuning,
encoder, JSCC) is a `Loop` (budget, seed, precision, checkpoint, reports) plus a `Hooks` subclass that says what
differs: the batch source, the loss, what happens around a step (pruning masks, codeword placement) and at an
epoch's end (pruning, validation)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.files import atomic_write
from engine.provenance import add_environment

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
Optimizer = torch.optim.Optimizer
Scheduler = torch.optim.lr_scheduler.LRScheduler


# ------------------------------------------------------------------------------------------------------ primitives


def pick_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """torch's global generator seeded with `seed`, and a new CPU generator seeded with it.

    Args:
        seed: the run's seed.
    Returns:
        The new generator (batch order, augmentation).
    """
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def autocast(device: torch.device, precision: str = "auto"):  # noqa: ANN201
    """The autocast context of `precision` on `device`. Evaluation (the reported accuracies) runs as deployed,
    "auto": fp32 on a CPU.

    Args:
        device: where the block computes.
        precision: one of `engine.config.PRECISIONS`: "auto" (bf16 on CUDA, fp32 on a CPU), "bf16" or "fp32".
    Returns:
        A `torch.autocast` context, enabled for bf16 only.
    """
    enabled = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, in hex.

    Args:
        path: the file.
    Returns:
        64 hex digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(obj: dict, path: Path) -> None:
    """Atomic torch.save with a sha256 sidecar, so a truncated or altered file is detected on load.

    Args:
        obj: tensors and plain values (loaded back with weights_only).
        path: the file; `<path>.sha256` is its sidecar.
    """
    digest = ""

    def write(tmp: Path) -> None:
        nonlocal digest
        torch.save(obj, tmp)
        digest = file_sha256(tmp)

    atomic_write(path, write)
    atomic_write(path.with_suffix(path.suffix + ".sha256"), lambda tmp: tmp.write_text(digest))


def load_checkpoint(path: Path) -> dict | None:
    """A checkpoint written by `save_checkpoint`; a corrupt one is reported in one line and ignored.

    Args:
        path: the file.
    Returns:
        Its contents (on the CPU), or None when missing or corrupt.
    """
    if not path.exists():
        return None
    side = path.with_suffix(path.suffix + ".sha256")
    try:
        if not side.exists() or side.read_text().strip() != file_sha256(path):
            raise ValueError("checksum mismatch")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the entry cannot be trusted
        log.warning("corrupt checkpoint %s (%s): recomputing it", path.name, str(exc).splitlines()[0][:120])
        return None


def discard_checkpoint(path: Path | None) -> None:
    """Remove a checkpoint and its sidecar (a finished run's resumable state); no-op for None or a missing file."""
    if path is not None:
        path.unlink(missing_ok=True)
        path.with_suffix(path.suffix + ".sha256").unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------ the loop


@dataclass(frozen=True)
class Loop:
    """What every training shares: budget, seed, precision, where it checkpoints and how it reports.

    `seed_global` seeds torch's global generator too (initial weights built in `Hooks.build`, dropout, codeword
    k-means); the batch generator is always seeded. A checkpoint saved with another `key` is not resumed. Progress
    every `report_every` steps reads "<label>epoch e/E loss l" (or "step s/S loss l" with `report_steps`), and after
    each epoch "<label>epoch e/E <validation>" unless `report_epochs` is off."""

    name: str  # in log lines: "base model <id>", "fine-tuning"
    device: torch.device
    epochs: int
    steps_per_epoch: int
    seed: int
    seed_global: bool = True
    precision: str = "auto"  # engine.config.PRECISIONS
    checkpoint: Path | None = None
    key: Any = None
    progress: Progress | None = None
    label: str = ""
    report_every: int = 10
    report_steps: bool = False
    report_epochs: bool = True

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole budget."""
        return self.epochs * self.steps_per_epoch


class Hooks:
    """What a training adds to the loop, called in this order: `build` once after seeding (returns the model,
    optimizer and scheduler); `prepare` once after a resume (timed with the training: cached features, say); per
    epoch `start_epoch` (after `model.train()`); per batch of `batches`: `before_step`, `loss` (under autocast), the
    optimizer and scheduler steps, `after_step`; per epoch's end `end_epoch` (True stops training) then `validate`
    (the epoch report's text, None: none). Steps are global (0-based, across epochs and resumes). `state_dict` is
    saved with every checkpoint and given back to `load_state_dict` on resume. `generator` is the loop's seeded
    generator, set before `build`: batch order and augmentation draw from it."""

    generator: torch.Generator

    def build(self) -> tuple[nn.Module, Optimizer, Scheduler]:
        raise NotImplementedError

    def prepare(self) -> None:
        pass

    def start_epoch(self, epoch: int) -> None:
        pass

    def batches(self, epoch: int) -> Iterable[Any]:
        raise NotImplementedError

    def before_step(self, step: int) -> None:
        pass

    def loss(self, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        pass

    def end_epoch(self, epochs_done: int) -> bool:
        return False

    def validate(self, epochs_done: int) -> str | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@dataclass
class LoopResult:
    """How a loop ended: epochs and optimizer steps done, training seconds summed over resumes, whether a hook
    stopped it, the epoch it resumed from (0: a fresh start) and the training environments over resumes."""

    epochs: int
    steps: int
    seconds: float
    stopped: bool
    resumed_from: int
    trained_on: list[dict[str, Any]] = field(default_factory=list)


def _resume(loop: Loop, hooks: Hooks, model: nn.Module, optimizer: Optimizer, scheduler: Scheduler) -> dict | None:
    """The loop's checkpoint loaded into the model, optimizer, scheduler, generator and hooks (None: none usable)."""
    saved = load_checkpoint(loop.checkpoint) if loop.checkpoint is not None else None
    if saved is not None and saved.get("config") != loop.key:
        log.warning("%s checkpoint %s was written for another configuration: starting over", loop.name,
                    loop.checkpoint.name)
        return None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        hooks.generator.set_state(saved["generator"])
        hooks.load_state_dict(saved.get("hooks") or {})
        log.info("resuming %s at epoch %d/%d", loop.name, int(saved["epoch"]), loop.epochs)
    return saved


def _report_step(loop: Loop, epoch: int, i: int, step: int, loss: torch.Tensor) -> None:
    if loop.report_steps:
        loop.progress((step + 1) / loop.total_steps, f"step {step + 1}/{loop.total_steps} loss {loss.item():.3f}")
    else:
        loop.progress((epoch + i / loop.steps_per_epoch) / loop.epochs,
                      f"{loop.label}epoch {epoch + 1}/{loop.epochs} loss {loss.item():.3f}")


def run_loop(loop: Loop, hooks: Hooks) -> LoopResult:
    """Train as `loop` says with what `hooks` add (see `Hooks` for the order of the calls).

    Args:
        loop: the budget, seed, precision, checkpoint and progress reports.
        hooks: the model, optimizer and scheduler, the batches, the loss, and what runs around steps and epochs.
    Returns:
        How the loop ended. The checkpoint stays on disk: the caller discards it once the run's result is saved.
    """
    seeded = seed_everything(loop.seed) if loop.seed_global else torch.Generator().manual_seed(loop.seed)
    hooks.generator = seeded
    model, optimizer, scheduler = hooks.build()
    saved = _resume(loop, hooks, model, optimizer, scheduler)
    epoch = int(saved["epoch"]) if saved is not None else 0
    seconds = float(saved["seconds"]) if saved is not None else 0.0
    stopped = bool(saved.get("stopped", False)) if saved is not None else False
    resumed_from = epoch
    trained_on = add_environment(saved.get("trained_on") if saved is not None else None, loop.device)
    start = time.perf_counter()
    hooks.prepare()
    seconds += time.perf_counter() - start
    while epoch < loop.epochs and not stopped:
        start = time.perf_counter()
        model.train()
        hooks.start_epoch(epoch)
        for i, batch in enumerate(hooks.batches(epoch)):
            step = epoch * loop.steps_per_epoch + i
            hooks.before_step(step)
            with autocast(loop.device, loop.precision):
                loss = hooks.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            hooks.after_step(step)
            if loop.progress and i % loop.report_every == 0:
                _report_step(loop, epoch, i, step, loss)
        epoch += 1
        stopped = bool(hooks.end_epoch(epoch))
        shown = hooks.validate(epoch)
        seconds += time.perf_counter() - start
        if loop.checkpoint is not None and epoch < loop.epochs and not stopped:
            save_checkpoint({"config": loop.key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "generator": seeded.get_state(),
                             "hooks": hooks.state_dict(), "epoch": epoch, "seconds": seconds, "stopped": stopped,
                             "trained_on": trained_on}, loop.checkpoint)
        if loop.progress and loop.report_epochs:
            text = " ".join(t for t in (f"{loop.label}epoch {epoch}/{loop.epochs}", shown) if t)
            loop.progress(epoch / loop.epochs, text + (" (stopped)" if stopped else ""))
    return LoopResult(epoch, epoch * loop.steps_per_epoch, seconds, stopped, resumed_from, trained_on)
