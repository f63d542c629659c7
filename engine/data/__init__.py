"""Datasets as uint8 tensors. Sources, in order: an explicit path (--data) or $COINFER_DATA; what is under
`<cache>/data/`; torchvision's CIFAR-10 download. A source is a torchvision CIFAR-10 root, an ImageFolder directory
with train/ and test/, or a tar archive of either. Images are decoded once with PIL (in parallel, straight from the
archive's bytes) and cached under `<cache>/data/` keyed by the source's content hash. Also here: seeded subsets and
validation splits, batched augmentation and normalisation, and the PNG size of the input images.

Modules: images (ImageData), load (finding the dataset), sources (layouts, fingerprints, tar and CIFAR reading),
decode (the parallel PIL decoder), jpeg (JPEG frame headers), cache (the decoded cache), splits, batches, png."""

from __future__ import annotations

from engine.data.batches import augment_batch, iterate_batches, normalize, resize_batch
from engine.data.images import ImageData
from engine.data.load import load_data
from engine.data.png import mean_png_bits, png_bits
from engine.data.splits import subset, train_val_split

__all__ = [
    "ImageData",
    "augment_batch",
    "iterate_batches",
    "load_data",
    "mean_png_bits",
    "normalize",
    "png_bits",
    "resize_batch",
    "subset",
    "train_val_split",
]
