"""Batches on the training device: seeded iteration, random crop and flip of whole uint8 batches, resizing for
progressive training, and normalisation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                    generator: torch.Generator | None = None,
                    drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches: views in order, or gathered by a seeded permutation (drawn on the generator's device).

    Args:
        x: inputs, batched along dim 0.
        y: labels, one per input.
        batch_size: images per batch (the last may be smaller).
        shuffle: gather by a random permutation instead of slicing in order.
        generator: draws the permutation; None: torch's default one, on x's device.
        drop_last: leave out a last, smaller batch.

    Returns:
        An iterator of (x_batch, y_batch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(x)
    stop = n - n % batch_size if drop_last else n
    perm = None
    if shuffle:
        device = generator.device if generator is not None else x.device
        perm = torch.randperm(n, generator=generator, device=device).to(x.device, non_blocking=True)
    for i in range(0, stop, batch_size):
        if perm is None:
            yield x[i : i + batch_size], y[i : i + batch_size]
        else:
            idx = perm[i : i + batch_size]
            yield x.index_select(0, idx), y.index_select(0, idx.to(y.device))


def augment_batch(x_uint8: torch.Tensor, generator: torch.Generator | None, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding plus random horizontal flip, for a whole batch at once: pad, then gather every
    output pixel at its per-sample offset.

    Args:
        x_uint8: images (N, C, H, W).
        generator: draws the offsets and flips (on its own device); None: torch's default one.
        padding: zero pixels added on each side before cropping back to H x W.

    Returns:
        The augmented batch, with x's shape, dtype and device.
    """
    n, c, h, w = x_uint8.shape
    span = 2 * padding + 1
    device = generator.device if generator is not None else x_uint8.device
    r = torch.randint(0, span * span * 2, (n,), generator=generator, device=device)
    r = r.to(x_uint8.device, non_blocking=True)  # host-to-device from pageable memory: no stream sync
    flip, dx, dy = (r % 2).bool(), (r // 2) % span, r // (2 * span)
    ar_h = torch.arange(h, device=x_uint8.device)
    ar_w = torch.arange(w, device=x_uint8.device)
    rows = dy[:, None] + ar_h
    cols = dx[:, None] + ar_w
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x_uint8, (padding, padding, padding, padding)).reshape(n, c, -1)
    index = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.gather(2, index).reshape(n, c, h, w)


def resize_batch(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """A batch at another size, for progressive resizing: 2x2 average pooling for an exact half, antialiased
    bilinear otherwise.

    Args:
        x: float images (N, C, H, W).
        size: (height, width); an int: square.

    Returns:
        The resized batch; x itself when already at `size`.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if x.shape[-2:] == (h, w):
        return x
    if x.shape[-2:] == (2 * h, 2 * w):
        return F.avg_pool2d(x, 2)
    return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor | Sequence[float], std: torch.Tensor | Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(x / 255 - mean) / std per channel.

    Args:
        x_uint8: images (N, C, H, W).
        mean: per-channel mean in [0, 1] units (ImageData.mean).
        std: per-channel standard deviation in [0, 1] units (ImageData.std).
        dtype: the result's floating-point type.

    Returns:
        The normalised batch as `dtype`, on x's device.
    """
    m = torch.as_tensor(mean, dtype=dtype, device=x_uint8.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=dtype, device=x_uint8.device).reshape(1, -1, 1, 1)
    return torch.addcmul(-m / s, x_uint8.to(dtype), 1.0 / (255.0 * s))
