"""Training throughput: the engine's training loop (batched uint8 augmentation + normalisation, one-cycle SGD,
validation after each epoch) against a bare PyTorch loop on pre-normalised float tensors without augmentation,
same model, batch size, optimiser and images, at each training precision asked for (`engine.config.PRECISIONS`;
bf16 only where the device computes it natively). Prints images/s of each and their ratio (goal: >= 0.90).
Run: python bench/bench_train.py [--data PATH] [--images N] [--width W] [--batch-size B] [--precision auto bf16]."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from engine.config import PRECISIONS  # noqa: E402
from engine.data import load_data, normalize, subset, train_val_split  # noqa: E402
from engine.profiles import PROFILES  # noqa: E402
from engine.train import make_model, native_bf16, train_base  # noqa: E402
from engine.training import autocast, pick_device  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def bare_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, lr: float,
              precision: str) -> float:
    """images/s of the plainest loop: fixed order, no augmentation, data already normalised."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        with autocast(x.device, precision):  # as the engine's loop
            loss = loss_fn(model(x[i : i + batch_size]), y[i : i + batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--images", type=int, default=5_500, help="training images (10 %% become validation)")
    parser.add_argument("--width", type=float, default=PROFILES.get("quick").width)
    parser.add_argument("--batch-size", type=int, default=PROFILES.get("quick").batch_size)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each loop; medians reported")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["auto"],
                        help="training precisions to measure (bf16 is skipped where it is not native)")
    args = parser.parse_args()

    data = subset(load_data(args.data), args.images, 1000, seed=0)
    profile = PROFILES.get("quick")
    cfg = dataclasses.replace(profile.base_config(data.fingerprint, width=args.width), epochs=1, scales=(),
                              batch_size=args.batch_size)
    device = pick_device()
    train_x, train_y, _, _ = train_val_split(data, cfg.val_fraction, cfg.seed)

    xf = normalize(train_x.to(device), data.mean.to(device), data.std.to(device)).contiguous(
        memory_format=torch.channels_last)
    skipped = [p for p in args.precision if p == "bf16" and not native_bf16(device)]
    rows = []
    for precision in [p for p in args.precision if p not in skipped]:
        bare_runs, engine_runs = [], []
        for _ in range(args.rounds):  # alternate, so drift in the machine's speed hits both loops alike
            torch.manual_seed(0)
            model = make_model(cfg, data).to(device, memory_format=torch.channels_last)
            bare_loop(model, xf[: 4 * args.batch_size], train_y[: 4 * args.batch_size].to(device), args.batch_size,
                      cfg.lr, precision)
            bare_runs.append(bare_loop(model, xf, train_y.to(device), args.batch_size, cfg.lr, precision))
            with tempfile.TemporaryDirectory(prefix="coinfer-bench-") as tmp:
                ckpt = train_base(dataclasses.replace(cfg, precision=precision), data, Path(tmp))
            engine_runs.append(ckpt["metrics"]["train_images"] / ckpt["metrics"]["train_seconds"])
        rows.append((precision, statistics.median(bare_runs), statistics.median(engine_runs)))

    print("Same model, batch size and optimiser, channels_last; the bare loop reads pre-normalised float tensors "
          "without augmentation, the engine loop does seeded shuffling, batched uint8 crop/flip augmentation, "
          f"normalisation and a validation pass (in fp32). Medians of {args.rounds} alternating rounds.\n")
    print("| model | device | precision | batch | images | bare loop | engine loop (incl. validation) | ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for precision, bare, engine in rows:
        print(f"| ResNet18 width {args.width:g} | {device} ({torch.get_num_threads()} threads) | {precision} | "
              f"{args.batch_size} | {len(train_x):,} | {bare:,.0f} img/s | {engine:,.0f} img/s | {engine / bare:.2f} |")
    if skipped:
        print(f"\nbf16: not measured, {device} has no native bf16 (AVX-512 BF16 or AMX on a CPU).")


if __name__ == "__main__":
    main()
