"""How much of a dataset is read and held, each checked before anything is allocated: loading a dataset stays well
within 1 GB of memory whatever its files claim (sizes in tar headers, dimensions in image headers, shapes of pickled
arrays), and a dataset past a limit is refused in one line that names it."""

from __future__ import annotations

MAX_FILE_BYTES = 64 << 20  # one image file, archive member or CIFAR-10 batch file (a batch is 31 MB)
MAX_HELD_BYTES = 256 << 20  # encoded files held at once, ENTRY_BYTES each added (CIFAR-10 as JPEGs: 70 MB)
ENTRY_BYTES = 256  # what holding one more file costs beside its bytes (its name, its entry)
MAX_STREAM_BYTES = 2 << 30  # an archive's uncompressed stream, read once from end to end
MAX_HEADER_BYTES = 1 << 20  # one extended tar header (pax or GNU long name), read whole by tarfile
MAX_IMAGES = 1_000_000  # images of one dataset
MAX_IMAGE_PIXELS = 1 << 24  # pixels of one image (4096 x 4096)
MAX_DECODED_BYTES = 512 << 20  # all images decoded, uint8 N x C x H x W (CIFAR-10: 184 MB)
