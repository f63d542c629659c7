"""Seeded, class-stratified subsets of a dataset and hold-out validation splits of its training set."""

from __future__ import annotations

import torch

from engine.data.images import ImageData
from engine.errors import UserError


def _stratified_pick(labels: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k indices with classes in proportion (seeded), and the remaining indices; both in seeded random order."""
    n = len(labels)
    perm = torch.randperm(n, generator=generator)
    lab = labels[perm]
    counts = torch.bincount(lab, minlength=1)
    order = torch.argsort(lab, stable=True)  # grouped by class, random within
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[lab[order]]
    key = (rank.to(torch.float64) + 0.5) / counts[lab].to(torch.float64)  # position within its class, in (0, 1)
    by_key = torch.argsort(key, stable=True)
    chosen, rest = perm[by_key[:k]], perm[by_key[k:]]
    chosen = chosen[torch.randperm(k, generator=generator)]
    rest = rest[torch.randperm(n - k, generator=generator)]
    return chosen, rest


def subset(data: ImageData, train_limit: int | None, test_limit: int | None, seed: int = 0) -> ImageData:
    """A seeded, class-stratified subset, in random order.

    Args:
        data: the dataset.
        train_limit: at most this many training images (None: all).
        test_limit: at most this many test images (None: all).
        seed: seeds the pick and the order.

    Returns:
        The subset, its fingerprint gaining a suffix naming the sizes and seed; `data` itself when nothing is cut.

    Raises:
        UserError: a limit is below 1.
    """
    gen = torch.Generator().manual_seed(seed)
    parts, cut = [], False
    for x, y, limit in ((data.train_x, data.train_y, train_limit), (data.test_x, data.test_y, test_limit)):
        if limit is not None and limit < 1:
            raise UserError(f"subset sizes must be positive, got {limit}")
        if limit is None or limit >= len(y):
            parts += [x, y]
            continue
        idx, _ = _stratified_pick(y, limit, gen)
        parts += [x[idx], y[idx]]
        cut = True
    if not cut:
        return data
    suffix = f"-sub{len(parts[1])}x{len(parts[3])}s{seed}"
    source = f"{data.source}; subset {len(parts[1]):,}/{len(parts[3]):,} (seed {seed})"
    return ImageData(data.name, list(data.classes), *parts, data.fingerprint + suffix, source)


def train_val_split(data: ImageData, val_fraction: float,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded, class-stratified hold-out of the training set. Validation images serve every decision the engine
    makes; the test split only the reported figures.

    Args:
        data: the dataset.
        val_fraction: share of the training images held out, in (0, 1); at least one image on each side.
        seed: seeds the pick and the order.

    Returns:
        (train_x, train_y, val_x, val_y), each in random order.

    Raises:
        UserError: val_fraction outside (0, 1), or fewer than 2 training images.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(data.train_y)
    if n < 2:
        raise UserError(f"need at least 2 training images for a validation split, have {n}")
    k = min(max(1, round(n * val_fraction)), n - 1)
    val, train = _stratified_pick(data.train_y, k, torch.Generator().manual_seed(seed))
    return data.train_x[train], data.train_y[train], data.train_x[val], data.train_y[val]
