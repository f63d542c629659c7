"""The co-inference wire protocol: frames round-trip; bad magic, versions, kinds, lengths and truncation are refused
before any payload is read."""

from __future__ import annotations

import json
import socket

import pytest

from engine.deploy import protocol
from engine.deploy.protocol import Frame, ProtocolError, Truncated
from engine.entropy import Payload


def _read_all(data: bytes, max_payload: int = protocol.DEFAULT_MAX_PAYLOAD) -> list[Frame | None]:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        frames = []
        while True:
            frame = protocol.read_frame(b, max_payload)
            frames.append(frame)
            if frame is None:
                return frames


def test_frames_round_trip() -> None:
    payload = Payload(b"\x01\x02\x03", 21, True)
    stream = protocol.hello("abc") + protocol.feature(7, 2048, payload) + protocol.result(7, 3, 0.5, 0.25)
    hello, feature, result, end = _read_all(stream)
    assert end is None
    assert protocol.control_json(hello) == {"variant": "abc", "protocol": protocol.VERSION}
    assert protocol.parse_feature(feature) == (7, 2048, payload)
    assert protocol.parse_result(result) == (7, 3, 0.5, 0.25)
    assert len(protocol.feature(0, 1, Payload.of_bytes(b"x" * 100))) == protocol.FRAMING_BYTES + 100


@pytest.mark.parametrize("payload", [Payload(b"", 0), Payload(b"\xf0", 4), Payload(b"\x80", 1, True),
                                     Payload(b"\x12\x34", 16, True), Payload(b"\xff\xfe", 15)])
def test_a_payload_travels_with_its_form_and_its_length_in_bits(payload: Payload) -> None:
    (frame, _) = _read_all(protocol.feature(3, 1, payload))
    assert protocol.parse_feature(frame) == (3, 1, payload)


def test_a_payload_whose_bytes_do_not_hold_its_bits_is_not_sent() -> None:
    for bad in (Payload(b"\x00\x00", 4), Payload(b"", 3), Payload(b"\x00", 9)):
        with pytest.raises(ValueError, match="do not hold a payload"):
            protocol.feature(0, 1, bad)


def test_empty_payload_and_clean_end() -> None:
    assert _read_all(protocol.pack(protocol.FEATURE)) == [Frame(protocol.FEATURE, b""), None]
    assert _read_all(b"") == [None]


@pytest.mark.parametrize(("header", "reason"), [
    (protocol.HEADER.pack(b"GE", protocol.VERSION, protocol.FEATURE, 0), "bad magic"),
    (protocol.HEADER.pack(b"CI", 9, protocol.FEATURE, 0), "version 9 is not supported"),
    (protocol.HEADER.pack(b"CI", 2, protocol.FEATURE, 0), r"version 2 is not supported \(this side speaks 3\)"),
    (protocol.HEADER.pack(b"CI", protocol.VERSION, 77, 0), "unknown message kind 77"),
    (protocol.HEADER.pack(b"CI", protocol.VERSION, protocol.FEATURE, 2**32 - 1), "over the 1,000-byte limit"),
    (protocol.HEADER.pack(b"CI", protocol.VERSION, protocol.HELLO, 10_000), "over the 4,096-byte limit"),
])
def test_bad_headers_are_refused(header: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        _read_all(header + b"x" * 10, max_payload=1000)


@pytest.mark.parametrize("cut", [3, protocol.HEADER.size + 5])
def test_truncated_frames(cut: int) -> None:
    with pytest.raises(Truncated, match="connection closed after"):
        _read_all(protocol.feature(1, 10, Payload.of_bytes(b"y" * 20))[:cut])


def test_malformed_payloads() -> None:
    with pytest.raises(ProtocolError, match="shorter than"):
        protocol.parse_feature(Frame(protocol.FEATURE, b"\x00\x01"))
    header = protocol.FEATURE_HEADER
    for form, data in ((0x40, b"\x00"), (0x08, b"\x00"), (0x03, b"")):  # unknown bits; padding with no byte to pad
        with pytest.raises(ProtocolError, match="form byte"):
            protocol.parse_feature(Frame(protocol.FEATURE, header.pack(1, 1, form) + data))
    with pytest.raises(ProtocolError, match="not JSON"):
        protocol.control_json(Frame(protocol.HELLO, b"\xff\xfe"))
    with pytest.raises(ProtocolError, match="naming a variant"):
        protocol.control_json(Frame(protocol.HELLO, json.dumps({"variant": 3}).encode()))
    with pytest.raises(ProtocolError, match="RESULT payload"):
        protocol.parse_result(Frame(protocol.RESULT_KIND, b"short"))
    with pytest.raises(ValueError, match="unknown message kind"):
        protocol.pack(42)
    assert len(protocol.error("x" * 10_000)) == protocol.HEADER.size + protocol.MAX_CONTROL_PAYLOAD
