"""The frame size and component count of a JPEG, read from its start-of-frame marker without decoding it; the
parallel decoder uses it to send same-shaped JPEGs straight to PIL's decoder."""

from __future__ import annotations

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_header(data: bytes | memoryview) -> tuple[int, int, int] | None:
    """The frame size of a JPEG, read from its start-of-frame marker.

    Args:
        data: the encoded file.

    Returns:
        (height, width, components); None when `data` is not a JPEG or has no frame header before its image data.
    """
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker in _SOF_MARKERS:
            if i + 10 > n:
                return None
            return (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8], data[i + 9]
        elif marker == 0xDA:  # image data before any frame header
            return None
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None
