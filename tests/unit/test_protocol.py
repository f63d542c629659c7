"""The co-inference wire protocol: frames round-trip; bad magic, versions, kinds, lengths and truncation are refused
before any payload is read."""

from __future__ import annotations

import json
import socket

import pytest

from engine.deploy import protocol
from engine.deploy.protocol import Frame, ProtocolError, Truncated


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
    stream = protocol.hello("abc") + protocol.feature(7, 2048, b"\x01\x02\x03") + protocol.result(7, 3, 0.5, 0.25)
    hello, feature, result, end = _read_all(stream)
    assert end is None
    assert protocol.control_json(hello) == {"variant": "abc", "protocol": protocol.VERSION}
    assert protocol.parse_feature(feature) == (7, 2048, b"\x01\x02\x03")
    assert protocol.parse_result(result) == (7, 3, 0.5, 0.25)
    assert len(protocol.feature(0, 1, b"x" * 100)) == protocol.HEADER.size + protocol.FEATURE_HEADER.size + 100


def test_empty_payload_and_clean_end() -> None:
    assert _read_all(protocol.pack(protocol.FEATURE)) == [Frame(protocol.FEATURE, b""), None]
    assert _read_all(b"") == [None]


@pytest.mark.parametrize(("header", "reason"), [
    (protocol.HEADER.pack(b"GE", protocol.VERSION, protocol.FEATURE, 0), "bad magic"),
    (protocol.HEADER.pack(b"CI", 9, protocol.FEATURE, 0), "version 9 is not supported"),
    (protocol.HEADER.pack(b"CI", 1, protocol.FEATURE, 0), r"version 1 is not supported \(this side speaks 2\)"),
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
        _read_all(protocol.feature(1, 10, b"y" * 20)[:cut])


def test_malformed_payloads() -> None:
    with pytest.raises(ProtocolError, match="shorter than"):
        protocol.parse_feature(Frame(protocol.FEATURE, b"\x00\x01"))
    with pytest.raises(ProtocolError, match="not JSON"):
        protocol.control_json(Frame(protocol.HELLO, b"\xff\xfe"))
    with pytest.raises(ProtocolError, match="naming a variant"):
        protocol.control_json(Frame(protocol.HELLO, json.dumps({"variant": 3}).encode()))
    with pytest.raises(ProtocolError, match="RESULT payload"):
        protocol.parse_result(Frame(protocol.RESULT_KIND, b"short"))
    with pytest.raises(ValueError, match="unknown message kind"):
        protocol.pack(42)
    assert len(protocol.error("x" * 10_000)) == protocol.HEADER.size + protocol.MAX_CONTROL_PAYLOAD
