"""Hostile protocol frames against a live server: bad magic, versions, kinds and lengths, a handshake that is not
one (another variant, not UTF-8, not an object, nested 2,000 deep, NaN), HTTP and TLS greetings, messages out of
order, undecodable bitstreams, a message cut short or trickled past its deadline. Each gets the protocol's ERROR
frame (one line) or, when the peer is gone or out of time, one log line; none leaves a traceback, writes a file, or
stops the server from serving a device right after."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator

import pytest
import torch
from corpus import Sandbox, sandbox_fixture, tiny_data_fixture  # noqa: F401 - fixtures
from crafted import write_dir

from bench.common import tiny_bundle_files
from engine.deploy import protocol
from engine.deploy.bundle import Bundle, load_bundle
from engine.deploy.client import DeviceClient
from engine.deploy.server import CoinferenceServer
from engine.entropy import Payload

P = protocol


def header(magic: bytes = b"CI", version: int = P.VERSION, kind: int = P.FEATURE, length: int = 0) -> bytes:
    return P.HEADER.pack(magic, version, kind, length)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(write_dir(tiny_bundle_files(), tmp_path_factory.mktemp("bundle") / "b"))


@pytest.fixture(scope="module")
def server(bundle: Bundle) -> Iterator[CoinferenceServer]:
    with CoinferenceServer(bundle, max_payload=10_000, read_timeout=30.0) as srv:
        yield srv


def _payload(bundle: Bundle) -> tuple[Payload, int]:
    return bundle.encode(bundle.device_output(torch.zeros(3, 32, 32, dtype=torch.uint8)))


# (what the peer sends, HELLO first, the reason the ERROR frame and the log give)
FRAMES: dict[str, tuple[bytes, bool, str]] = {
    "bad magic": (header(b"GE"), False, "bad magic"),
    "version 2": (header(version=2), False, "protocol version 2 is not supported (this side speaks 3)"),
    "version 255": (header(version=255), False, "protocol version 255 is not supported"),
    "kind 0": (header(kind=0), False, "unknown message kind 0"),
    "kind 99": (header(kind=99), False, "unknown message kind 99"),
    "HELLO of 10,000 bytes": (header(kind=P.HELLO, length=10_000), False, "over the 4,096-byte limit"),
    "FEATURE of 4 GiB": (header(length=2**32 - 1), True, "over the 10,000-byte limit"),
    "FEATURE before HELLO": (P.feature(0, 48, Payload(b"", 0)), False, "expected HELLO first, got FEATURE"),
    "RESULT before HELLO": (P.result(0, 1, 0.0, 0.0), False, "expected HELLO first, got RESULT"),
    "ERROR before HELLO": (P.error("boo"), False, "expected HELLO first, got ERROR"),
    "WELCOME before HELLO": (P.welcome("x", "entropy"), False, "expected HELLO first, got WELCOME"),
    "HELLO of another variant": (P.hello("fedcba9876543210"), False, "the device runs fedcba9876543210"),
    "HELLO not UTF-8": (P.pack(P.HELLO, b"\xff\xfe\x00"), False, "HELLO payload is not JSON: not UTF-8"),
    "HELLO a list": (P.pack(P.HELLO, b"[1, 2]"), False, "must be a JSON object"),
    "HELLO variant a number": (P.pack(P.HELLO, b'{"variant": 3}'), False, "a JSON object naming a variant"),
    "HELLO nested 2,000 deep": (P.pack(P.HELLO, b"[" * 2000 + b"]" * 2000), False, "nested too deeply"),
    "HELLO with NaN": (P.pack(P.HELLO, b'{"variant": NaN}'), False, "NaN is not a number JSON allows"),
    "HELLO cut JSON": (P.pack(P.HELLO, b'{"variant": "x'), False, "HELLO payload is not JSON"),
    "an HTTP request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, "bad magic b'GE'"),
    "a TLS greeting": (bytes.fromhex("16030100a5010000a10303") + bytes(40), False, "bad magic"),
    "FEATURE shorter than its header": (P.pack(P.FEATURE, b"\x00"), True, "shorter than its 9-byte header"),
    "FEATURE of an unknown form": (P.pack(P.FEATURE, P.FEATURE_HEADER.pack(0, 48, 0x20)), True, "form byte 0x20"),
    "HELLO twice": (P.hello("0" * 16), True, "expected FEATURE, got HELLO"),
    "RESULT from the device": (P.result(0, 1, 0.0, 0.0), True, "expected FEATURE, got RESULT"),
}

# messages that cost only themselves: the connection goes on
MESSAGES: dict[str, tuple[str, str]] = {
    "no bits for 48 symbols": ("empty", "image 0: undecodable bitstream"),
    "5 symbols announced": ("count 5", "5 symbols announced"),
    "4 billion symbols announced": ("count 4294967295", "4294967295 symbols announced"),
    "random bytes": ("random", "image 0: undecodable bitstream"),
    "a fixed-length form of the wrong length": ("fixed 40", "has 192 bits, not 40"),
    "padding bits that are not zero": ("padded", "padding bits are not zero"),
    "an entropy-coded form as long as the fixed one": ("coded 192", "no shorter than the 192-bit fixed-length form"),
}


def _still_serves(bundle: Bundle, server: CoinferenceServer) -> None:
    with DeviceClient(bundle, *server.address, rate_bps=8e6, timeout=10) as client:
        image = torch.zeros(3, 32, 32, dtype=torch.uint8)
        assert client.infer(image).label == int(bundle.predict(image[None])[0])


def _no_traceback(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    assert "Traceback" not in capsys.readouterr().err
    assert not any(r.exc_info for r in caplog.records) and all(r.levelno < logging.ERROR for r in caplog.records)


@pytest.mark.parametrize("case", list(FRAMES))
def test_a_hostile_frame_gets_one_error_frame(case: str, bundle: Bundle, server: CoinferenceServer,
                                              sandbox: Sandbox, caplog: pytest.LogCaptureFixture,
                                              capsys: pytest.CaptureFixture) -> None:
    data, hello, reason = FRAMES[case]
    sandbox.freeze()
    with caplog.at_level(logging.WARNING, logger="engine.deploy"), \
            socket.create_connection(server.address, timeout=10) as sock:
        if hello:
            sock.sendall(P.hello(bundle.id))
            assert P.read_frame(sock).kind == P.WELCOME
        sock.sendall(data)
        frame = P.read_frame(sock)
        assert frame is not None and frame.kind == P.ERROR
        text = frame.payload.decode()
        assert reason in text and "\n" not in text, text
        with contextlib.suppress(ConnectionResetError):
            assert P.read_frame(sock) is None  # the server closed the connection
    logged = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
    assert len(logged) == 1 and "\n" not in logged[0], logged
    _still_serves(bundle, server)
    _no_traceback(caplog, capsys)


@pytest.mark.parametrize("case", list(MESSAGES))
def test_a_hostile_message_costs_only_itself(case: str, bundle: Bundle, server: CoinferenceServer, sandbox: Sandbox,
                                             caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    how, reason = MESSAGES[case]
    payload, count = _payload(bundle)
    if how == "empty":
        payload = Payload(b"", 0, True)
    elif how.startswith("count"):
        count = int(how.split()[1])
    elif how.startswith(("fixed", "coded")):
        bits = int(how.split()[1])
        payload = Payload(bytes((bits + 7) // 8), bits, how.startswith("coded"))
    elif how == "padded":
        payload = Payload(b"\x01", 7, True)
    else:
        payload = Payload.of_bytes(bytes(range(7, 250, 3)))._replace(coded=True)
    sandbox.freeze()
    with caplog.at_level(logging.WARNING, logger="engine.deploy"), \
            socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(P.hello(bundle.id))
        assert P.read_frame(sock).kind == P.WELCOME
        sock.sendall(P.feature(0, count, payload))
        frame = P.read_frame(sock)
        assert frame.kind == P.ERROR and reason in frame.payload.decode() and b"\n" not in frame.payload
        good, n = _payload(bundle)
        sock.sendall(P.feature(1, n, good))  # the same connection goes on
        assert P.parse_result(P.read_frame(sock))[0] == 1
    _no_traceback(caplog, capsys)


@pytest.mark.parametrize("case", ["cut in the header", "cut in the payload", "trickled past its deadline"])
def test_a_peer_that_goes_or_stalls_costs_one_log_line(case: str, bundle: Bundle, sandbox: Sandbox,
                                                       caplog: pytest.LogCaptureFixture,
                                                       capsys: pytest.CaptureFixture) -> None:
    message = P.feature(0, 48, Payload.of_bytes(b"q" * 40))
    reason = "truncated message" if case.startswith("cut") else "no complete"
    sandbox.freeze()
    with caplog.at_level(logging.WARNING, logger="engine.deploy"), \
            CoinferenceServer(bundle, read_timeout=2.0) as server:
        sock = socket.create_connection(server.address, timeout=10)
        sock.sendall(P.hello(bundle.id))
        assert P.read_frame(sock).kind == P.WELCOME
        if case.startswith("cut"):
            sock.sendall(message[:3 if "header" in case else P.HEADER.size + 4])
        else:
            with contextlib.suppress(OSError):
                for byte in message:  # a byte every 0.25 s: each read is quick, the message never is
                    sock.sendall(bytes([byte]))
                    time.sleep(0.25)
        sock.close()
        end = time.monotonic() + 10
        while not any(reason in r.getMessage() for r in caplog.records):
            assert time.monotonic() < end, "not logged"
            time.sleep(0.05)
        assert server.stats.images == 0 and server.stats.active == 0
    logged = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
    assert len(logged) == 1 and "\n" not in logged[0]
    _no_traceback(caplog, capsys)
