"""Base-model training and evaluation. Data stays in uint8 tensors; augmentation and normalisation run on whole
batches on the training device, channels_last. CUDA when available; precision per `engine.config.PRECISIONS`. The
loop itself (seeding, resuming, autocast, checkpoints) is `engine.training.run_loop`; `train_base` configures it."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from engine.config import BaseModelConfig
from engine.data import ImageData, augment_batch, iterate_batches, normalize, resize_batch, train_val_split
from engine.errors import UserError
from engine.models import build_model
from engine.training import (
    Hooks,
    Loop,
    Optimizer,
    Progress,
    Scheduler,
    autocast,
    discard_checkpoint,
    file_sha256,
    load_checkpoint,
    pick_device,
    run_loop,
    save_checkpoint,
)

log = logging.getLogger(__name__)

PROGRESS_IMAGES = 1000  # validation images of the progress figure after each epoch but the last


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global generator seeded with `seed` for the block (a new module's initial weights, say) and restored
    after it: what the block draws does not depend on what the process drew before (a sweep worker's earlier jobs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively (CUDA, or a CPU with AVX-512 BF16, AMX or Arm's BF16 extension);
    elsewhere bf16 autocast is emulated and slower than fp32."""
    if device.type != "cpu":
        return True
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: trust oneDNN's check
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
            batch_size: int = 500) -> torch.Tensor:
    """Predicted labels of uint8 images, model in eval mode."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i : i + batch_size].to(device), mean.to(device), std.to(device))
        with autocast(device):
            out.append(model(xb).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> float:
    """Top-1 accuracy over all of `x`."""
    return float((predict(model, x, mean, std) == y).float().mean())


def base_checkpoint_path(cfg: BaseModelConfig, cache: Path) -> Path:
    return cache / "models" / f"base-{cfg.id}.pt"


def make_model(cfg: BaseModelConfig, data: ImageData) -> nn.Module:
    """The untrained model of a base config for `data` (its classes, channels and image size)."""
    return build_model(cfg.model, cfg.width, data.num_classes, data.channels, (data.channels, *data.image_size))


def weights_reference(path: str | Path) -> tuple[str, str]:
    """The sha256 and absolute path of a weights file, as a base config records them (`--weights FILE`).

    Args:
        path: a file torch.save wrote: a state dict, or a dict holding one under "state_dict".
    Returns:
        (sha256, absolute path); a UserError when the file cannot be read.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"no weights file {path}")
    return file_sha256(path), str(path)


def adopt_weights(cfg: BaseModelConfig, data: ImageData, cache: Path) -> dict:
    """The base checkpoint of trained weights given instead of training: the file (checked against its sha256)
    loaded with weights_only into the model, measured on the validation and test images, saved to the cache.

    Args:
        cfg: a base config with `weights` and `weights_path`; data: the images; cache: the cache folder.
    Returns:
        the checkpoint dict, as `train_base` returns it (no training time).
    """
    path = Path(cfg.weights_path)
    if not path.is_file() or file_sha256(path) != cfg.weights:
        raise UserError(f"the weights file {path} is missing or changed (sha256 {cfg.weights[:12]}...)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    model = make_model(cfg, data)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise UserError(f"the weights in {path.name} do not fit model {cfg.model}: "
                        f"{str(exc).splitlines()[0][:160]}") from None
    _, _, val_x, val_y = train_val_split(data, cfg.val_fraction, cfg.seed)
    mean, std = data.mean, data.std
    ckpt = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "config": json.loads(json.dumps(cfg.__dict__)),
            "metrics": {"val_accuracy": accuracy(model, val_x, val_y, mean, std),
                        "test_accuracy": accuracy(model, data.test_x, data.test_y, mean, std), "train_seconds": 0.0,
                        "device": "weights file", "precision": cfg.precision, "epochs": 0, "train_images": 0,
                        "trained_on": [], "weights": cfg.weights}}
    save_checkpoint(ckpt, base_checkpoint_path(cfg, cache))
    return ckpt


class WeightAverage:
    """An exponential moving average of a model's weights and batch-norm statistics (Polyak and Juditsky, "Acceleration
    of stochastic approximation by averaging", 1992; kept over the whole state dict as timm's ModelEmaV2 keeps it),
    with the warm-up decay min(decay, (1 + t) / (10 + t)) after t updates so the first steps do not dominate."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        live = model.state_dict()  # paired once: the update runs on every optimizer step
        floats = [k for k in self.state if live[k].is_floating_point()]
        self._averaged, self._live = [self.state[k] for k in floats], [live[k].detach() for k in floats]
        self._others = [(self.state[k], live[k]) for k in self.state if not live[k].is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the model's current state (integer buffers are copied)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, value in self._others:
            average.copy_(value)
        if self._averaged:
            torch._foreach_lerp_(self._averaged, self._live, 1.0 - decay)

    @torch.no_grad()
    def load(self, state: Mapping[str, torch.Tensor], updates: int) -> None:
        """Restore a saved average in place (the pairing with the live model stays valid)."""
        for k, v in self.state.items():
            v.copy_(state[k])
        self.updates = int(updates)


class BaseTraining(Hooks):
    """`train_base`'s hooks: SGD + Nesterov with a one-cycle LR on label-smoothed cross-entropy, augmented images
    resized to each epoch's size (progressive resizing), validation at the data's own size."""

    def __init__(self, cfg: BaseModelConfig, data: ImageData, device: torch.device,
                 split: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        self.train_x, self.train_y, self.val_x, self.val_y = split
        self.mean, self.std = data.mean.to(device), data.std.to(device)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.size = data.image_size
        self.val_acc = float("nan")
        self.average: WeightAverage | None = None

    def build(self) -> tuple[nn.Module, Optimizer, Scheduler]:
        cfg = self.cfg
        # built after seeding: the initial weights come from the seed
        self.model = make_model(cfg, self.data).to(self.device, memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                    weight_decay=cfg.weight_decay)
        total = cfg.epochs * math.ceil(len(self.train_x) / cfg.batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                                        pct_start=0.25, anneal_strategy="linear")
        if cfg.ema:
            self.average = WeightAverage(self.model, cfg.ema)
        return self.model, optimizer, scheduler

    def prepare(self) -> None:
        self.x_dev, self.y_dev = self.train_x.to(self.device), self.train_y.to(self.device)

    def start_epoch(self, epoch: int) -> None:
        self.size = self.cfg.input_size(epoch, self.data.image_size)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in iterate_batches(self.x_dev, self.y_dev, self.cfg.batch_size, shuffle=True,
                                      generator=self.generator):
            xb = resize_batch(normalize(augment_batch(xb, self.generator), self.mean, self.std), self.size)
            yield xb.contiguous(memory_format=torch.channels_last), yb

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xb, yb = batch
        return self.loss_fn(self.model(xb), yb)

    def after_step(self, step: int) -> None:
        if self.average is not None:
            self.average.update(self.model)

    def state_dict(self) -> dict:
        if self.average is None:
            return {}
        return {"average": self.average.state, "average_updates": self.average.updates}

    def load_state_dict(self, state: dict) -> None:
        if self.average is not None and "average" in state:
            self.average.load(state["average"], state["average_updates"])

    def keep_better(self) -> dict[str, float | bool]:
        """With weight averaging, the averaged weights in the model when they score higher on validation than the
        trained ones (a choice on validation data only). Returns both validation accuracies and which was kept."""
        if self.average is None:
            return {}
        trained = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.average.state)
        averaged = accuracy(self.model, self.val_x, self.val_y, self.mean, self.std)
        kept = averaged > self.val_acc
        report = {"val_accuracy_trained": self.val_acc, "val_accuracy_averaged": averaged, "averaged": kept}
        if kept:
            self.val_acc = averaged
        else:
            self.model.load_state_dict(trained)
        return report

    def validate(self, epochs_done: int) -> str:
        # every validation image after the last epoch (the figure kept); before it a progress figure on the first
        # PROGRESS_IMAGES, at the data's size only (after an epoch at another size batch norm's statistics are that
        # size's, the figure would mean little): a full pass in fp32 after every epoch slows a wide model's training
        if epochs_done == self.cfg.epochs:
            self.val_acc = accuracy(self.model, self.val_x, self.val_y, self.mean, self.std)
            return f"val acc {self.val_acc:.4f}"
        if self.size == self.data.image_size:
            n = min(PROGRESS_IMAGES, len(self.val_x))
            return f"val acc {accuracy(self.model, self.val_x[:n], self.val_y[:n], self.mean, self.std):.4f} " \
                   f"({n} images)"
        return f"at {self.size[0]}x{self.size[1]} (validation at full size only)"


def train_base(cfg: BaseModelConfig, data: ImageData, cache: Path, progress: Progress | None = None) -> dict:
    """Train the base model, resuming from the last finished epoch of an interrupted run.

    SGD + Nesterov, one-cycle LR, label smoothing; with `cfg.sizes` or `cfg.scales`, each epoch's augmented images
    are resized to that epoch's size (progressive resizing; validation and test at the data's own size, validation
    only after epochs at that size and after the last); with `cfg.ema`, an average of the weights kept beside them
    and used instead where it scores higher on validation.

    Args:
        cfg: the base model's configuration (model, width, budget, seed, precision).
        data: the images.
        cache: the cache folder (models/base-<id>.pt, and its .partial.pt while training).
        progress: called with (fraction done, message).
    Returns:
        The checkpoint dict: state_dict, config, metrics.
    """
    device = pick_device()
    if cfg.precision == "bf16" and not native_bf16(device):
        log.warning("this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 training will be slower than fp32")
    split = train_val_split(data, cfg.val_fraction, cfg.seed)
    hooks = BaseTraining(cfg, data, device, split)
    partial = base_checkpoint_path(cfg, cache).with_suffix(".partial.pt")
    loop = Loop(f"base model {cfg.id}", device, cfg.epochs, math.ceil(len(split[0]) / cfg.batch_size), cfg.seed,
                precision=cfg.precision, checkpoint=partial, progress=progress)
    done = run_loop(loop, hooks)
    averaging = hooks.keep_better()
    model = hooks.model.to(memory_format=torch.contiguous_format)
    test_acc = accuracy(model, data.test_x, data.test_y, hooks.mean, hooks.std)
    ckpt = {
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "config": json.loads(json.dumps(cfg.__dict__)),
        "metrics": {"val_accuracy": hooks.val_acc, "test_accuracy": test_acc, "train_seconds": done.seconds,
                    "device": str(device), "precision": cfg.precision, "epochs": cfg.epochs,
                    "train_images": len(split[0]), "trained_on": done.trained_on, **averaging},
    }
    save_checkpoint(ckpt, base_checkpoint_path(cfg, cache))
    discard_checkpoint(partial)
    return ckpt


def load_or_train_base(cfg: BaseModelConfig, data: ImageData, cache: Path,
                       progress: Progress | None = None) -> tuple[nn.Module, dict]:
    """The cached base model for `cfg` (weights_only load, checksum verified), trained first when missing (or, with
    `cfg.weights`, loaded from the weights file)."""
    ckpt = load_checkpoint(base_checkpoint_path(cfg, cache))
    model = make_model(cfg, data)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["state_dict"])
        except (KeyError, RuntimeError) as exc:
            log.warning("base checkpoint %s does not match its config (%s): retraining", cfg.id, str(exc)[:120])
            ckpt = None
    if ckpt is None:
        ckpt = adopt_weights(cfg, data, cache) if cfg.weights else train_base(cfg, data, cache, progress)
        model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
