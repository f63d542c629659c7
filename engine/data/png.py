"""The lossless PNG size of input images: the cost of sending them whole to the server. The mean over a dataset's
test images is cached per fingerprint under `<cache>/data/`."""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.data.cache import write_cache_file
from engine.data.images import ImageData
from engine.paths import cache_dir as default_cache_dir

log = logging.getLogger(__name__)

PNG_SETTINGS = "PIL PNG, optimize=False, compress_level=6 (default)"


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    img = np.ascontiguousarray(img[:, :, 0] if img.shape[2] == 1 else img)
    Image.fromarray(img).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def png_bits(images_uint8: torch.Tensor) -> np.ndarray:
    """Lossless PNG size of each image: PIL's PNG encoder with its default settings (compress_level 6) and
    optimize=False.

    Args:
        images_uint8: images (N, C, H, W), C 1, 2, 3 or 4.

    Returns:
        int64 (N,): each image's PNG size in bits.
    """
    arr = images_uint8.detach().cpu().permute(0, 2, 3, 1).numpy()
    return np.array([8 * len(_png_bytes(img)) for img in arr], dtype=np.int64)


def mean_png_bits(data: ImageData, cache_dir: Path | None = None) -> float:
    """Mean PNG size of the test images (the server-only cost), cached per fingerprint in
    <cache>/data/png-<fingerprint>.json.

    Args:
        data: the dataset.
        cache_dir: the cache root; None: engine.paths.cache_dir().

    Returns:
        The mean size in bits; 0.0 without test images.
    """
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "data" / f"png-{data.fingerprint}.json"
    n = len(data.test_y)
    if path.is_file():
        try:
            obj = json.loads(path.read_text())
            value = float(obj["mean_bits"])
            fresh = (obj["fingerprint"], obj["images"], obj["settings"]) == (data.fingerprint, n, PNG_SETTINGS)
            if fresh and math.isfinite(value) and value > 0:
                return value
            raise ValueError("stale entry")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("corrupt PNG-size cache %s (%s): recomputing it", path.name, str(exc)[:80])
    value = float(png_bits(data.test_x).mean()) if n else 0.0
    text = json.dumps({"fingerprint": data.fingerprint, "images": n, "settings": PNG_SETTINGS, "mean_bits": value})
    write_cache_file(path, lambda tmp: tmp.write_text(text))
    return value
