"""Training and evaluation loops. Data stays in uint8 tensors; augmentation and normalisation run on whole
batches on the training device, channels_last. CUDA when available; precision per `engine.config.PRECISIONS`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.config import BaseModelConfig
from engine.data import ImageData, augment_batch, iterate_batches, normalize, resize_batch, train_val_split
from engine.files import atomic_write
from engine.models import build_model
from engine.provenance import add_environment

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global generator seeded with `seed` for the block (a new module's initial weights, say) and restored
    after it: what the block draws does not depend on what the process drew before (a sweep worker's earlier jobs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def autocast(device: torch.device, precision: str = "auto"):  # noqa: ANN201
    """The autocast context of `precision` (one of `engine.config.PRECISIONS`) on `device`. Evaluation (the
    reported accuracies) runs as deployed, "auto": fp32 on a CPU."""
    enabled = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


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


@dataclass
class TrainState:
    """Everything needed to resume an interrupted run at an epoch boundary."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    epoch: int = 0
    seconds: float = 0.0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(obj: dict, path: Path) -> None:
    """Atomic torch.save with a sha256 sidecar, so a truncated or altered file is detected on load."""
    digest = ""

    def write(tmp: Path) -> None:
        nonlocal digest
        torch.save(obj, tmp)
        digest = _sha256(tmp)

    atomic_write(path, write)
    atomic_write(path.with_suffix(path.suffix + ".sha256"), lambda tmp: tmp.write_text(digest))


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at `path`, or None when missing; a corrupt one is reported in one line and ignored."""
    if not path.exists():
        return None
    side = path.with_suffix(path.suffix + ".sha256")
    try:
        if not side.exists() or side.read_text().strip() != _sha256(path):
            raise ValueError("checksum mismatch")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the entry cannot be trusted
        log.warning("corrupt checkpoint %s (%s): recomputing it", path.name, str(exc).splitlines()[0][:120])
        return None


def base_checkpoint_path(cfg: BaseModelConfig, cache: Path) -> Path:
    return cache / "models" / f"base-{cfg.id}.pt"


def make_model(cfg: BaseModelConfig, data: ImageData) -> nn.Module:
    return build_model(cfg.model, cfg.width, data.num_classes, data.channels)


def train_base(cfg: BaseModelConfig, data: ImageData, cache: Path, progress: Progress | None = None) -> dict:
    """Train the base model (SGD + Nesterov, one-cycle LR, label smoothing), resuming from the last finished epoch
    of an interrupted run; with `cfg.sizes` or `cfg.scales`, each epoch's augmented images are resized to that
    epoch's size (progressive resizing; validation and test at the data's own size, validation only after epochs at
    that size and after the last). Returns the checkpoint dict: state_dict, config, metrics."""
    device = pick_device()
    if cfg.precision == "bf16" and not native_bf16(device):
        log.warning("this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 training will be slower than fp32")
    generator = seed_everything(cfg.seed)
    train_x, train_y, val_x, val_y = train_val_split(data, cfg.val_fraction, cfg.seed)
    mean, std = data.mean.to(device), data.std.to(device)
    model = make_model(cfg, data).to(device, memory_format=torch.channels_last)  # faster on CPU and GPU
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                    pct_start=0.25, anneal_strategy="linear")
    state = TrainState(model, optimizer, scheduler, generator)
    partial = base_checkpoint_path(cfg, cache).with_suffix(".partial.pt")
    resumed = load_checkpoint(partial)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        generator.set_state(resumed["generator"])
        state.epoch, state.seconds = int(resumed["epoch"]), float(resumed["seconds"])
        log.info("resuming base model %s at epoch %d", cfg.id, state.epoch)
    trained_on = add_environment(resumed.get("trained_on") if resumed is not None else None, device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    train_x_dev, train_y_dev = train_x.to(device), train_y.to(device)
    val_acc = float("nan")
    while state.epoch < cfg.epochs:
        start = time.perf_counter()
        model.train()
        size = cfg.input_size(state.epoch, data.image_size)
        for step, (xb, yb) in enumerate(
            iterate_batches(train_x_dev, train_y_dev, cfg.batch_size, shuffle=True, generator=generator)
        ):
            xb = normalize(augment_batch(xb, generator), mean, std)
            xb = resize_batch(xb, size)
            xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg.precision):
                loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if progress and step % 10 == 0:
                done = (state.epoch + step / steps_per_epoch) / cfg.epochs
                progress(done, f"epoch {state.epoch + 1}/{cfg.epochs} loss {loss.item():.3f}")
        state.epoch += 1
        # validation at the data's size, so not after an epoch at another size (batch norm's statistics are that
        # size's, the figure would mean little), except after the last
        if size == data.image_size or state.epoch == cfg.epochs:
            val_acc = accuracy(model, val_x, val_y, mean, std)
            shown = f"val acc {val_acc:.4f}"
        else:
            shown = f"at {size[0]}x{size[1]} (validation at full size only)"
        state.seconds += time.perf_counter() - start
        if progress:
            progress(state.epoch / cfg.epochs, f"epoch {state.epoch}/{cfg.epochs} {shown}")
        if state.epoch < cfg.epochs:
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                             "epoch": state.epoch, "seconds": state.seconds, "trained_on": trained_on}, partial)
    model = model.to(memory_format=torch.contiguous_format)
    test_acc = accuracy(model, data.test_x, data.test_y, mean, std)
    ckpt = {
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "config": json.loads(json.dumps(cfg.__dict__)),
        "metrics": {"val_accuracy": val_acc, "test_accuracy": test_acc, "train_seconds": state.seconds,
                    "device": str(device), "precision": cfg.precision, "epochs": cfg.epochs,
                    "train_images": len(train_x), "trained_on": trained_on},
    }
    save_checkpoint(ckpt, base_checkpoint_path(cfg, cache))
    partial.unlink(missing_ok=True)
    partial.with_suffix(partial.suffix + ".sha256").unlink(missing_ok=True)
    return ckpt


def load_or_train_base(cfg: BaseModelConfig, data: ImageData, cache: Path,
                       progress: Progress | None = None) -> tuple[nn.Module, dict]:
    """The cached base model for `cfg` (weights_only load, checksum verified), trained first when missing."""
    ckpt = load_checkpoint(base_checkpoint_path(cfg, cache))
    model = make_model(cfg, data)
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["state_dict"])
        except (KeyError, RuntimeError) as exc:
            log.warning("base checkpoint %s does not match its config (%s): retraining", cfg.id, str(exc)[:120])
            ckpt = None
    if ckpt is None:
        ckpt = train_base(cfg, data, cache, progress)
        model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
