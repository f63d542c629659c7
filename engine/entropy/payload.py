"""What one image's symbols send: the shorter of two forms, chosen here for measurement and deployment alike.

- fixed-length: every symbol in ceil(log2(alphabet)) bits, most significant bit first, the message zero-padded to
  a whole byte: exactly `fixed_bytes(count, alphabet)` bytes;
- entropy-coded: the codec's stream, sent only when it is strictly shorter than the fixed-length form.

The payload's length is the flag: the frame that carries a payload states its length, and the receiver knows the
symbol count and the alphabet, so a payload of exactly the fixed-length size is the fixed-length form, a shorter
one the entropy-coded form, and a longer one is malformed. The flag costs no bit; the bits per image are
8 x the payload's bytes. Torch-free, as the codecs."""

from __future__ import annotations

import numpy as np

from engine.entropy.base import EntropyCodec, as_symbols

# The least a payload can weigh: the fixed-length form of at least one symbol is at least one byte, and an entropy
# stream replaces it only when strictly shorter yet non-empty (Huffman spends at least a bit per symbol; an ANS
# coder's final state is at least 2**24). A bound known before any coder is trained: the sweep reads it to skip
# variants that a measured row already dominates.
MIN_PAYLOAD_BITS = 8


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


def fixed_bytes(count: int, alphabet_size: int) -> int:
    """Bytes of the fixed-length form of `count` symbols: ceil(count x symbol_bits / 8).

    Args:
        count: symbols per message.
        alphabet_size: the codec's alphabet.

    Returns:
        The fixed-length form's size in bytes.
    """
    return (int(count) * symbol_bits(alphabet_size) + 7) // 8


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


def encode_payloads(codec: EntropyCodec, symbols_2d: np.ndarray) -> list[bytes]:
    """Each row's payload: its entropy-coded stream when strictly shorter than its fixed-length form, else that.

    Args:
        codec: the entropy codec (its alphabet sizes the fixed-length form).
        symbols_2d: [N, D] symbols, one message per row.

    Returns:
        One payload per row, at most `fixed_bytes(D, alphabet)` bytes each.
    """
    arr = as_symbols(symbols_2d, codec.alphabet_size, 2)
    streams = codec.encode(arr)
    size = fixed_bytes(arr.shape[1], codec.alphabet_size)
    fixed = [i for i, s in enumerate(streams) if len(s) >= size]
    for i, payload in zip(fixed, pack_fixed(arr[fixed], codec.alphabet_size), strict=True):
        streams[i] = payload
    return streams


def payload_bits(codec: EntropyCodec, symbols_2d: np.ndarray) -> np.ndarray:
    """Bits each row's payload takes on the wire (8 x the bytes of `encode_payloads`), from the codec's stream
    sizes without packing the fixed-length forms.

    Args:
        codec: the entropy codec.
        symbols_2d: [N, D] symbols.

    Returns:
        int64 [N]: 8 x min(entropy-coded bytes, fixed-length bytes) per row.
    """
    arr = as_symbols(symbols_2d, codec.alphabet_size, 2)
    return np.minimum(codec.bits_per_image(arr), 8 * fixed_bytes(arr.shape[1], codec.alphabet_size))


def decode_payload(codec: EntropyCodec, payload: bytes, count: int) -> np.ndarray:
    """The `count` symbols of one payload of `encode_payloads`, its form read from its length.

    Args:
        codec: the entropy codec the payload was made with.
        payload: the bytes received.
        count: the symbols announced.

    Returns:
        The symbols, [count] integers.

    Raises:
        MalformedPayload: a payload longer than the fixed-length form, or a malformed fixed-length form; the codec's
            ValueError for an undecodable entropy-coded form.
    """
    if count < 0:
        raise MalformedPayload(f"count must be >= 0, got {count}")
    size = fixed_bytes(count, codec.alphabet_size)
    if len(payload) > size:
        raise MalformedPayload(f"payload of {len(payload)} bytes is longer than the {size}-byte fixed-length form "
                               f"of {count} symbols")
    if len(payload) == size:
        return unpack_fixed(payload, count, codec.alphabet_size)
    return codec.decode(payload, count)
