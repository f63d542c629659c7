"""The co-inference wire protocol: versioned, length-prefixed frames over TCP.

Frame: an 8-byte header `>2sBBI` (magic b"CI", protocol version, message kind, payload length) and the payload.
A reader rejects a bad magic, an unknown version or kind, and a payload over its limit before reading the payload,
so a hostile length costs nothing; a stream that ends inside a frame is a `Truncated` error, one that ends between
frames a clean end.

Messages (device -> server: HELLO, FEATURE; server -> device: WELCOME, RESULT, ERROR):
    HELLO    JSON {"variant": id, "protocol": 3}: which bundle the device runs
    WELCOME  JSON {"variant": id, "coding": ...}: the server runs the same bundle
    FEATURE  `>IIB` (sequence number, symbol count, form) + the payload of one image; for symbols, the shorter of
             their fixed-length and entropy-coded forms (`engine.entropy.payload`). The form byte: bit 7 set for
             the entropy-coded form, bits 0-2 the padding bits in the payload's last byte (so the payload's length
             is stated to the bit), the other bits zero.

Version 3 states a payload's form and its length in bits; version 2 told the forms apart by the payload's length
in bytes, version 1 always entropy-coded them; each side refuses another version.
    RESULT   `>IHff` (sequence number, predicted label, decode seconds, server-program seconds)
    ERROR    UTF-8 reason (the connection closes after it unless the framing stayed intact)
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from engine.entropy.payload import Payload
from engine.untrusted import json_object

MAGIC = b"CI"
VERSION = 3  # 3: the form and the length in bits stated; 2: symbols in the shorter of two forms
HEADER = struct.Struct(">2sBBI")
FEATURE_HEADER = struct.Struct(">IIB")
CODED_FORM, PADDING_MASK = 0x80, 0x07
RESULT = struct.Struct(">IHff")
FRAMING_BYTES = HEADER.size + FEATURE_HEADER.size  # what a FEATURE frame adds to an image's payload
MAX_PADDING_BITS = 7  # and the padding of the payload's last byte, at most
HELLO, WELCOME, FEATURE, RESULT_KIND, ERROR = 1, 2, 3, 4, 5
KINDS = {HELLO: "HELLO", WELCOME: "WELCOME", FEATURE: "FEATURE", RESULT_KIND: "RESULT", ERROR: "ERROR"}
DEFAULT_MAX_PAYLOAD = 4 << 20  # bytes; a CIFAR feature is a few kB, a 224x224 PNG about 150 kB
MAX_CONTROL_PAYLOAD = 4096  # HELLO / WELCOME / ERROR


class ProtocolError(Exception):
    """A message that breaks the protocol; `str()` is the reason that is logged and sent back."""


class Truncated(ProtocolError):
    """The stream ended inside a frame (the peer disconnected mid-message)."""


@dataclass(frozen=True)
class Frame:
    kind: int
    payload: bytes

    @property
    def name(self) -> str:
        return KINDS.get(self.kind, str(self.kind))


def pack(kind: int, payload: bytes = b"") -> bytes:
    """One frame: header + payload."""
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind}")
    return HEADER.pack(MAGIC, VERSION, kind, len(payload)) + payload


def parse_header(header: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[int, int]:
    """(kind, payload length) of an 8-byte header; ProtocolError when it is not one this reader accepts."""
    magic, version, kind, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not a coinfer co-inference stream")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version} is not supported (this side speaks {VERSION}): run the same "
                            "coinfer release on the device and the server")
    if kind not in KINDS:
        raise ProtocolError(f"unknown message kind {kind}")
    limit = MAX_CONTROL_PAYLOAD if kind in (HELLO, WELCOME, ERROR) else max_payload
    if length > limit:
        raise ProtocolError(f"{KINDS[kind]} payload of {length:,} bytes is over the {limit:,}-byte limit")
    return kind, length


def recv_exact(sock: socket.socket, n: int, *, started: bool = False, deadline: float | None = None) -> bytes | None:
    """Exactly n bytes; None on a clean end before the first byte (when not `started`), Truncated after it.

    Args:
        sock: the connection.
        n: how many bytes.
        started: whether a frame has begun (an end of stream is then a truncation).
        deadline: a `time.monotonic()` by which all n bytes must have come (TimeoutError after it), however they
            trickle in; None: each read waits as long as the socket's timeout.

    Returns:
        The bytes, or None at a clean end of stream.
    """
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{got} of {n} bytes by the deadline")
            sock.settimeout(left)
        chunk = sock.recv(min(n - got, 1 << 16))
        if not chunk:
            if got == 0 and not started:
                return None
            raise Truncated(f"connection closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, max_payload: int = DEFAULT_MAX_PAYLOAD,
               deadline: float | None = None) -> Frame | None:
    """The next frame, None at a clean end of stream; ProtocolError / Truncated when the stream is bad.

    Args:
        sock: the connection.
        max_payload: the largest FEATURE payload accepted.
        deadline: a `time.monotonic()` by which the whole frame must have come (TimeoutError after it): a peer
            trickling a byte at a time cannot hold the reader longer. The socket's timeout is restored after.

    Returns:
        The frame, or None at a clean end of stream.
    """
    timeout = sock.gettimeout()
    try:
        header = recv_exact(sock, HEADER.size, deadline=deadline)
        if header is None:
            return None
        kind, length = parse_header(header, max_payload)
        payload = recv_exact(sock, length, started=True, deadline=deadline) if length else b""
    finally:
        if deadline is not None:
            sock.settimeout(timeout)
    assert payload is not None
    return Frame(kind, payload)


# ------------------------------------------------------------------------------------------------------ payloads


def hello(variant: str) -> bytes:
    return pack(HELLO, json.dumps({"variant": variant, "protocol": VERSION}).encode())


def welcome(variant: str, coding: str) -> bytes:
    return pack(WELCOME, json.dumps({"variant": variant, "coding": coding}).encode())


def control_json(frame: Frame) -> dict[str, Any]:
    """The JSON object of a HELLO or WELCOME, read as any JSON from elsewhere (`engine.untrusted`); ProtocolError
    when it is not one naming a variant."""
    obj = json_object(frame.payload, MAX_CONTROL_PAYLOAD, lambda m: ProtocolError(f"{frame.name} payload is not "
                      f"JSON: {m}"), "send a JSON object naming a variant")
    if not isinstance(obj.get("variant"), str):
        raise ProtocolError(f"{frame.name} must be a JSON object naming a variant")
    return obj


def feature(seq: int, count: int, payload: Payload) -> bytes:
    """A FEATURE frame of one image's payload (its form and padding stated in the form byte)."""
    padding = -payload.bits % 8
    if len(payload.data) != (payload.bits + 7) // 8:
        raise ValueError(f"{len(payload.data)} bytes do not hold a payload of {payload.bits} bits")
    form = (CODED_FORM if payload.coded else 0) | padding
    return pack(FEATURE, FEATURE_HEADER.pack(seq, count, form) + payload.data)


def parse_feature(frame: Frame) -> tuple[int, int, Payload]:
    """(sequence number, symbol count, payload) of a FEATURE frame."""
    if len(frame.payload) < FEATURE_HEADER.size:
        raise ProtocolError(f"FEATURE payload of {len(frame.payload)} bytes is shorter than its "
                            f"{FEATURE_HEADER.size}-byte header")
    seq, count, form = FEATURE_HEADER.unpack_from(frame.payload)
    data = frame.payload[FEATURE_HEADER.size:]
    padding = form & PADDING_MASK
    if form & ~(CODED_FORM | PADDING_MASK) or (padding and not data):
        raise ProtocolError(f"FEATURE form byte {form:#04x} is not one this side writes")
    return seq, count, Payload(data, 8 * len(data) - padding, bool(form & CODED_FORM))


def result(seq: int, label: int, decode_seconds: float, server_seconds: float) -> bytes:
    return pack(RESULT_KIND, RESULT.pack(seq, label, decode_seconds, server_seconds))


def parse_result(frame: Frame) -> tuple[int, int, float, float]:
    """(sequence number, label, decode seconds, server-program seconds) of a RESULT frame."""
    if len(frame.payload) != RESULT.size:
        raise ProtocolError(f"RESULT payload must be {RESULT.size} bytes, got {len(frame.payload)}")
    seq, label, decode_s, server_s = RESULT.unpack(frame.payload)
    return seq, label, float(decode_s), float(server_s)


def error(reason: str) -> bytes:
    return pack(ERROR, reason.encode("utf-8", errors="replace")[:MAX_CONTROL_PAYLOAD])
