"""What one image's symbols send: the shorter of two forms, chosen here for measurement and deployment alike.

- fixed-length: every symbol in ceil(log2(alphabet)) bits, most significant bit first: exactly
  `fixed_bits(count, alphabet)` bits;
- entropy-coded: the codec's stream, sent only when it holds strictly fewer bits than the fixed-length form
  (Huffman's streams end on any bit, ANS's on a byte).

A `Payload` is the bytes with their length in bits and which form they are; the frame that carries it states both
(`engine.deploy.protocol`: a flag and the count of padding bits in its last byte), so the bits per image are the
payload's bits, and the padding up to a whole byte (at most 7 bits) is framing, counted with the frame's header.
A 16-symbol alphabet sends one symbol in 4 bits, not in a byte. Torch-free, as the codecs."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from engine.entropy.base import EntropyCodec, as_symbols

# The least a payload can weigh: the fixed-length form of one symbol of a two-symbol alphabet is one bit, and an
# entropy-coded form replaces a fixed-length one only when strictly shorter. A bound known before any coder is
# trained: the sweep reads it to skip variants that a measured row already dominates.
MIN_PAYLOAD_BITS = 1


class Payload(NamedTuple):
    """One image's payload: `data` holds `bits` bits, most significant first, zero-padded to a whole byte;
    `coded` says it is the entropy-coded form (else the fixed-length form, or a payload that is not symbols)."""

    data: bytes
    bits: int
    coded: bool = False

    @classmethod
    def of_bytes(cls, data: bytes) -> Payload:
        """A payload of whole bytes that is not symbols (a PNG, a label, raw values)."""
        return cls(bytes(data), 8 * len(data), False)


class MalformedPayload(ValueError):
    """A payload that is neither form of the announced symbols; `str()` is the one-line reason."""


def symbol_bits(alphabet_size: int) -> int:
    """Bits per symbol of the fixed-length form, ceil(log2(alphabet_size)).

    Args:
        alphabet_size: symbols lie in [0, alphabet_size); at least 2.

    Returns:
        The bits each symbol takes.
    """
    if alphabet_size < 2:
        raise ValueError(f"alphabet_size must be >= 2, got {alphabet_size}")
    return (int(alphabet_size) - 1).bit_length()


def fixed_bits(count: int, alphabet_size: int) -> int:
    """Bits of the fixed-length form of `count` symbols: count x symbol_bits.

    Args:
        count: symbols per message.
        alphabet_size: the codec's alphabet.

    Returns:
        The fixed-length form's length in bits.
    """
    return int(count) * symbol_bits(alphabet_size)


def fixed_bytes(count: int, alphabet_size: int) -> int:
    """Bytes that hold the fixed-length form of `count` symbols: ceil(fixed_bits / 8)."""
    return (fixed_bits(count, alphabet_size) + 7) // 8


def pack_fixed(symbols_2d: np.ndarray, alphabet_size: int) -> list[bytes]:
    """The fixed-length form of each row of an [N, D] array of symbols in [0, alphabet_size).

    Args:
        symbols_2d: the symbols, one message per row.
        alphabet_size: the alphabet.

    Returns:
        One payload of `fixed_bytes(D, alphabet_size)` bytes per row.
    """
    arr = as_symbols(symbols_2d, alphabet_size, 2).astype(np.uint64)
    b = symbol_bits(alphabet_size)
    if not arr.size:
        return [b""] * len(arr)
    shifts = np.arange(b - 1, -1, -1, dtype=np.uint64)
    bits = ((arr[:, :, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(len(arr), -1)
    return [row.tobytes() for row in np.packbits(bits, axis=1)]


def unpack_fixed(payload: bytes, count: int, alphabet_size: int) -> np.ndarray:
    """The `count` symbols of a fixed-length payload; MalformedPayload for a wrong size, nonzero padding or a
    symbol outside the alphabet.

    Args:
        payload: exactly `fixed_bytes(count, alphabet_size)` bytes.
        count: the symbols it holds.
        alphabet_size: the alphabet.

    Returns:
        The symbols, int64 [count].
    """
    b, size = symbol_bits(alphabet_size), fixed_bytes(count, alphabet_size)
    if len(payload) != size:
        raise MalformedPayload(f"a fixed-length payload of {count} symbols has {size} bytes, not {len(payload)}")
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
    if bits[count * b:].any():
        raise MalformedPayload("the fixed-length payload's padding bits are not zero")
    weights = np.uint64(1) << np.arange(b - 1, -1, -1, dtype=np.uint64)
    values = (bits[:count * b].reshape(count, b).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    if values.size and int(values.max()) >= alphabet_size:
        raise MalformedPayload(f"symbol {int(values.max())} of the fixed-length payload is outside the alphabet "
                               f"[0, {alphabet_size})")
    return values.astype(np.int64)


def encode_payloads(codec: EntropyCodec, symbols_2d: np.ndarray) -> list[Payload]:
    """Each row's payload: its entropy-coded stream when it holds strictly fewer bits than the fixed-length form,
    else that form.

    Args:
        codec: the entropy codec (its alphabet sizes the fixed-length form).
        symbols_2d: [N, D] symbols, one message per row.

    Returns:
        One payload per row, of at most `fixed_bits(D, alphabet)` bits each.
    """
    arr = as_symbols(symbols_2d, codec.alphabet_size, 2)
    streams, bits = codec.encode(arr), codec.bits_per_image(arr)
    size = fixed_bits(arr.shape[1], codec.alphabet_size)
    out = [Payload(s, int(b), True) for s, b in zip(streams, bits, strict=True)]
    fixed = [i for i, b in enumerate(bits) if b >= size]
    for i, data in zip(fixed, pack_fixed(arr[fixed], codec.alphabet_size), strict=True):
        out[i] = Payload(data, size, False)
    return out


def payload_bits(codec: EntropyCodec, symbols_2d: np.ndarray) -> np.ndarray:
    """Bits each row's payload holds (those of `encode_payloads`), from the codec's stream lengths without packing
    the fixed-length forms.

    Args:
        codec: the entropy codec.
        symbols_2d: [N, D] symbols.

    Returns:
        int64 [N]: min(entropy-coded bits, fixed-length bits) per row.
    """
    arr = as_symbols(symbols_2d, codec.alphabet_size, 2)
    return np.minimum(codec.bits_per_image(arr), fixed_bits(arr.shape[1], codec.alphabet_size))


def decode_payload(codec: EntropyCodec, payload: Payload, count: int) -> np.ndarray:
    """The `count` symbols of one payload of `encode_payloads`.

    Args:
        codec: the entropy codec the payload was made with.
        payload: what was received: bytes, their length in bits, and the form.
        count: the symbols announced.

    Returns:
        The symbols, [count] integers.

    Raises:
        MalformedPayload: bytes that do not hold the stated bits with zero padding, a fixed-length form of the wrong
            length, an entropy-coded form no shorter than the fixed-length one, or (codecs that count exact bits)
            whose code ends before or after its stated bits; the codec's ValueError for an undecodable entropy-coded
            form.
    """
    if count < 0:
        raise MalformedPayload(f"count must be >= 0, got {count}")
    data, bits, coded = payload
    if not 0 <= bits <= 8 * len(data) < bits + 8:
        raise MalformedPayload(f"{len(data)} bytes cannot hold a payload of {bits} bits")
    if bits % 8 and data[-1] & ((1 << (8 - bits % 8)) - 1):
        raise MalformedPayload("the payload's padding bits are not zero")
    size = fixed_bits(count, codec.alphabet_size)
    if not coded:
        if bits != size:
            raise MalformedPayload(f"a fixed-length payload of {count} symbols has {size} bits, not {bits}")
        return unpack_fixed(data, count, codec.alphabet_size)
    if bits >= size:
        raise MalformedPayload(f"an entropy-coded payload of {bits} bits is no shorter than the {size}-bit "
                               f"fixed-length form of {count} symbols")
    symbols = codec.decode(data, count)
    if codec.exact_bits and (used := int(codec.bits_per_image(symbols[None, :])[0])) != bits:
        raise MalformedPayload(f"the entropy-coded payload's {count} symbols end at bit {used}, not at the stated "
                               f"{bits}")
    return symbols
