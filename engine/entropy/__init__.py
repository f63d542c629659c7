"""Entropy coding of integer symbols without torch: the codec interface and registry (base.py), the static Huffman
code (huffman.py), ANS under per-context models (ans.py), and what one image sends: the shorter of the
fixed-length and the entropy-coded form (payload.py). `engine.coding` builds its codings on them; a device
that runs its program with onnxruntime codes with them alone."""

from engine.entropy.base import CODECS, EntropyCodec, as_symbols, empirical_entropy_bits
from engine.entropy.payload import (
    MalformedPayload,
    Payload,
    decode_payload,
    encode_payloads,
    fixed_bits,
    fixed_bytes,
    payload_bits,
)

# isort: split
# each module registers its codec; in this order, the registry's (and the dashboard's) order
from engine.entropy import huffman  # noqa: F401, I001
from engine.entropy import ans  # noqa: F401

__all__ = ["CODECS", "EntropyCodec", "MalformedPayload", "Payload", "as_symbols", "decode_payload",
           "empirical_entropy_bits", "encode_payloads", "fixed_bits", "fixed_bytes", "payload_bits"]
