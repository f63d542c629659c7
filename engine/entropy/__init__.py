"""Entropy coding of integer symbols without torch: the codec interface and registry (base.py), the static Huffman
code (huffman.py) and ANS under per-context models (ans.py). `engine.coding` builds its codings on them; a device
that runs its program with onnxruntime codes with them alone."""

from engine.entropy.base import CODECS, EntropyCodec, as_symbols, empirical_entropy_bits

# isort: split
# each module registers its codec; in this order, the registry's (and the dashboard's) order
from engine.entropy import huffman  # noqa: F401, I001
from engine.entropy import ans  # noqa: F401

__all__ = ["CODECS", "EntropyCodec", "as_symbols", "empirical_entropy_bits"]
