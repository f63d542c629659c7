"""Real co-inference: the token bucket, the server under malformed, truncated, oversized and concurrent traffic, the
device client's timings, the JSCC channel hook, and `python -m engine serve` / `device` as two processes."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import served
from torch import nn

from engine.config import VariantConfig
from engine.data import ImageData
from engine.deploy import protocol
from engine.deploy.bundle import Bundle
from engine.deploy.client import DeviceClient, live_session
from engine.deploy.export import write_bundle
from engine.deploy.link import TokenBucket, parse_address, send_paced
from engine.deploy.server import CoinferenceServer, resolve_channel
from engine.deploy.timing import modelled_latency, null_bundle, runtime_overhead_s
from engine.entropy import Payload
from engine.entropy.huffman import HuffmanCodec
from engine.errors import UserError
from engine.latency import Overheads
from engine.methods import RunContext
from engine.profiles import PROFILES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VARIANT = "0123456789abcdef"


class _TinyDevice(nn.Module):
    """uint8 image -> 48 symbols in [0, 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(self.conv(x.float() / 255.0))
        return torch.round(y * 15).flatten(1).long()


class _TinyServer(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n, 10)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc(s.float() / 15.0)


def tiny_bundle(coding: str = "entropy") -> Bundle:
    """A bundle of two small random programs (no training, no data): the protocol, not the model, is under test."""
    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    device = torch.jit.trace(_TinyDevice().eval(), image)
    sent = device(image)
    if coding == "analog":
        device = torch.jit.trace(nn.Sequential(_TinyDevice(), nn.Flatten()).eval(), image)
        server = torch.jit.trace(_TinyServer(48).eval(), sent.float())
        codec = None
    else:
        server = torch.jit.trace(_TinyServer(48).eval(), sent)
        codec = HuffmanCodec.fit(np.random.default_rng(0).integers(0, 16, (64, 48)), alphabet_size=16)
    meta = {"id": VARIANT, "method": "original", "split": "conv5_x", "coding": coding, "symbols_per_image": 48,
            "alphabet_size": 16, "sent_shape": [48], "input_shape": [3, 32, 32], "num_classes": 10, "channel": None}
    return Bundle(Path("tiny"), {}, meta, {"id": VARIANT}, {}, device, server, codec)


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return tiny_bundle()


@pytest.fixture()
def server(bundle: Bundle) -> Iterator[CoinferenceServer]:
    with CoinferenceServer(bundle, max_payload=10_000, read_timeout=5.0) as srv:
        yield srv
        _wait(lambda: srv.stats.active == 0)  # every connection's thread ends


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _wait(predicate, timeout: float = 5.0) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------------ the link


def test_token_bucket_paces_bytes_at_the_rate() -> None:
    now = [0.0]
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s

    bucket = TokenBucket(1000.0, burst_bytes=0, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        bucket.consume(250)
    assert now[0] == pytest.approx(1.0) and waits == pytest.approx([0.25] * 4)
    now[0] += 10.0  # idle: with no burst nothing is saved up
    assert bucket.reserve(100) == pytest.approx(0.1)
    burst = TokenBucket(1000.0, burst_bytes=500, clock=lambda: now[0], sleep=sleep)
    assert burst.reserve(300) == 0.0 and burst.reserve(300) == pytest.approx(0.1)
    now[0] += 0.5  # the debt of 100 is paid and 400 tokens accrue
    assert burst.reserve(400) == 0.0
    with pytest.raises(UserError):
        TokenBucket(0.0)


def test_paced_send_takes_bytes_over_rate() -> None:
    a, b = socket.socketpair()
    with a, b:
        start = time.perf_counter()
        send_paced(a, b"z" * 2000, TokenBucket(20_000.0), chunk_bytes=200)  # 0.1 s at 20 kB/s
        elapsed = time.perf_counter() - start
        assert b.recv(2000, socket.MSG_WAITALL) == b"z" * 2000
    assert 0.095 <= elapsed < 0.2


def test_late_wake_ups_do_not_slow_the_link() -> None:
    now = [0.0]

    def oversleep(s: float) -> None:  # a busy CPU wakes the sender 10 ms late every time
        now[0] += s + 0.01

    bucket = TokenBucket(1000.0, clock=lambda: now[0], sleep=oversleep)
    a, b = socket.socketpair()
    with a, b:
        send_paced(a, b"w" * 1000, bucket, chunk_bytes=100)  # 1 s of link time
        assert now[0] == pytest.approx(1.01)  # one late wake-up, not ten
        send_paced(a, b"w" * 500, bucket, chunk_bytes=100)  # the next message starts when this one is there
        assert now[0] == pytest.approx(1.52)
        assert len(b.recv(1500, socket.MSG_WAITALL)) == 1500


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_address("[::1]:9") == ("::1", 9)
    for bad in ("localhost", "host:", "host:99999", ":80"):
        with pytest.raises(UserError, match="HOST:PORT"):
            parse_address(bad)


# ------------------------------------------------------------------------------------------------------ sessions


def test_session_predicts_as_the_bundle_does(bundle: Bundle, server: CoinferenceServer) -> None:
    x = images(8)
    host, port = server.address
    assert host == "127.0.0.1"
    with DeviceClient(bundle, host, port, rate_bps=8e6) as client:
        report = client.run(x, bundle.predict(x).tolist())
    assert report.accuracy == 1.0 and server.stats.images == 8 and server.stats.rejected == 0
    assert [t.label for t in report.timings] == bundle.predict(x).tolist()
    payloads = [bundle.encode(bundle.device_output(im))[0] for im in x]
    assert [t.payload_bits for t in report.timings] == [p.bits for p in payloads]
    assert report.wire_bytes == sum(len(p.data) for p in payloads) + 8 * protocol.FRAMING_BYTES
    assert report.median_s <= report.p95_s <= max(report.latencies)
    for t in report.timings:
        assert t.total_s >= t.device_s + t.encode_s + t.transmit_s


def test_transmit_time_is_bytes_over_rate(bundle: Bundle) -> None:
    rate_bps = 8 * 400.0  # 400 B/s: a ~40-byte message takes ~100 ms
    report = live_session(bundle, images(3), None, rate_bps, delay_s=0.01)
    for t in report.timings:
        expected = t.wire_bytes * 8 / rate_bps + 0.01
        # the rate is enforced; above it, only the late wake-ups of a busy CPU (two cores shared in CI)
        assert 0.98 * expected <= t.transmit_s <= 1.25 * expected + 0.05
    assert report.accuracy is None and report.rate_bps == rate_bps


def test_several_devices_at_once(bundle: Bundle, server: CoinferenceServer) -> None:
    host, port = server.address
    results: dict[int, list[int]] = {}
    expected = {i: bundle.predict(images(4, seed=i)).tolist() for i in range(4)}

    def device(i: int) -> None:
        with DeviceClient(bundle, host, port, rate_bps=8e5) as client:
            results[i] = [t.label for t in client.run(images(4, seed=i)).timings]

    threads = [threading.Thread(target=device, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == expected and server.stats.connections == 4 and server.stats.images == 16


# ------------------------------------------------------------------------------------------------------ hostility


def _connect(server: CoinferenceServer, hello: bool = True) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=5)
    if hello:
        sock.sendall(protocol.hello(VARIANT))
        assert protocol.read_frame(sock).kind == protocol.WELCOME
    return sock


def _expect_error(sock: socket.socket, reason: str) -> None:
    frame = protocol.read_frame(sock)
    assert frame is not None and frame.kind == protocol.ERROR and reason in frame.payload.decode()


def _still_serves(bundle: Bundle, server: CoinferenceServer) -> None:
    with DeviceClient(bundle, *server.address, rate_bps=8e6) as client:
        assert client.infer(images(1)[0]).label == int(bundle.predict(images(1))[0])


@pytest.mark.parametrize(("message", "reason"), [
    (protocol.HEADER.pack(b"HT", protocol.VERSION, protocol.FEATURE, 0), "bad magic"),
    (protocol.HEADER.pack(b"CI", 1, protocol.FEATURE, 0), "protocol version 1 is not supported"),
    (protocol.HEADER.pack(b"CI", protocol.VERSION, 99, 0), "unknown message kind 99"),
    (protocol.HEADER.pack(b"CI", protocol.VERSION, protocol.FEATURE, 50_000_000), "over the 10,000-byte limit"),
    (protocol.pack(protocol.RESULT_KIND, b"x" * 18), "expected FEATURE, got RESULT"),
    (protocol.pack(protocol.FEATURE, b"\x00"), "shorter than its 9-byte header"),
])
def test_malformed_messages_are_rejected_and_logged(bundle: Bundle, server: CoinferenceServer, message: bytes,
                                                    reason: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.deploy"), _connect(server) as sock:
        sock.sendall(message)
        _expect_error(sock, reason)
        assert protocol.read_frame(sock) is None  # the server closed this connection
    assert any(reason in r.getMessage() for r in caplog.records)
    _still_serves(bundle, server)


def test_handshake_is_checked(server: CoinferenceServer) -> None:
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(protocol.feature(0, 48, Payload.of_bytes(b"")))
        _expect_error(sock, "expected HELLO first")
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(protocol.hello("fedcba9876543210"))
        _expect_error(sock, "the device runs fedcba9876543210")
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(protocol.pack(protocol.HELLO, b"[1, 2]"))
        _expect_error(sock, "naming a variant")
    assert server.stats.rejected == 3


def test_undecodable_bitstream_costs_only_that_message(bundle: Bundle, server: CoinferenceServer) -> None:
    payload, count = bundle.encode(bundle.device_output(images(1)[0]))
    with _connect(server) as sock:
        sock.sendall(protocol.feature(0, count, Payload.of_bytes(b"")))  # no bits for 48 symbols
        _expect_error(sock, "image 0: undecodable bitstream")
        sock.sendall(protocol.feature(1, 5, payload))  # wrong symbol count
        _expect_error(sock, "5 symbols announced")
        sock.sendall(protocol.feature(2, count, payload))  # the connection still works
        frame = protocol.read_frame(sock)
        assert frame.kind == protocol.RESULT_KIND and protocol.parse_result(frame)[:2] == (2, int(
            bundle.predict(images(1))[0]))
    assert server.stats.rejected == 2 and server.stats.images == 1


def test_disconnect_mid_message_costs_nothing(bundle: Bundle, server: CoinferenceServer,
                                              caplog: pytest.LogCaptureFixture) -> None:
    baseline = threading.active_count()
    with caplog.at_level(logging.WARNING, logger="engine.deploy"):
        for cut in (3, protocol.HEADER.size + 4):
            sock = _connect(server)
            sock.sendall(protocol.feature(0, 48, Payload.of_bytes(b"q" * 40))[:cut])
            sock.close()
        _wait(lambda: server.stats.active == 0 and server.stats.rejected == 2)
    assert sum("truncated message" in r.getMessage() for r in caplog.records) == 2
    _wait(lambda: threading.active_count() <= baseline)
    _still_serves(bundle, server)


def test_stalled_client_is_dropped(bundle: Bundle) -> None:
    with CoinferenceServer(bundle, read_timeout=0.2) as srv, _connect(srv) as sock:
        sock.sendall(protocol.feature(0, 48, Payload.of_bytes(b"q" * 40))[:12])
        _wait(lambda: srv.stats.rejected == 1)
        assert srv.stats.reasons[-1] == "no complete message within 0.2 s"


def test_busy_server_refuses_extra_devices(bundle: Bundle) -> None:
    computing = threading.Event()

    def slow(x: torch.Tensor) -> torch.Tensor:  # long enough that a loaded machine still asks while it computes
        computing.set()
        time.sleep(3.0)
        return x

    payload, count = bundle.encode(bundle.device_output(images(1)[0]))
    with CoinferenceServer(bundle, max_clients=1, channel=slow) as srv, _connect(srv) as first:
        first.sendall(protocol.feature(0, count, payload))  # the server computes on it: it cannot be dropped
        assert computing.wait(10)  # not merely between two reads, when it waits for the next message
        with socket.create_connection(srv.address, timeout=5) as second:
            second.sendall(protocol.hello(VARIANT))
            _expect_error(second, "server busy: 1 devices connected")
        assert protocol.read_frame(first).kind == protocol.RESULT_KIND
        assert srv.stats.rejected == 1 and srv.stats.dropped == 0


def test_a_trickled_message_meets_its_deadline(bundle: Bundle) -> None:
    with CoinferenceServer(bundle, read_timeout=0.4) as srv, _connect(srv) as sock:
        message, start = protocol.feature(0, 48, Payload.of_bytes(b"q" * 40)), time.monotonic()
        with contextlib.suppress(OSError):
            for byte in message:  # a byte every 50 ms: each read is quick, the message never is
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                if srv.stats.rejected:
                    break
        _wait(lambda: srv.stats.rejected == 1)
        assert srv.stats.reasons[-1] == "no complete message within 0.4 s" and time.monotonic() - start < 1.5


class _Trickler:
    """A connection that sends `message` one byte every `every` seconds, from a thread, until closed."""

    def __init__(self, server: CoinferenceServer, message: bytes, hello: bool, every: float = 0.05) -> None:
        self.sock = _connect(server, hello)
        self.message, self.every, self.stop = message, every, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            for byte in self.message:
                if self.stop.wait(self.every):
                    return
                self.sock.sendall(bytes([byte]))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def test_tricklers_cannot_lock_devices_out(bundle: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    feature = protocol.feature(0, 48, Payload.of_bytes(b"q" * 4000))
    with caplog.at_level(logging.WARNING, logger="engine.deploy"), \
            CoinferenceServer(bundle, max_clients=2, read_timeout=30.0) as srv:
        tricklers = [_Trickler(srv, feature, hello=True) for _ in range(3)]  # past the 2 devices' places
        tricklers += [_Trickler(srv, protocol.hello(VARIANT), hello=False) for _ in range(3)]  # never finish HELLO
        try:
            time.sleep(0.3)
            with DeviceClient(bundle, *srv.address, rate_bps=8e6, timeout=10) as client:
                report = client.run(images(3))
            assert [t.label for t in report.timings] == bundle.predict(images(3)).tolist()
            assert srv.stats.dropped >= 2 and srv.stats.rejected == 0
        finally:
            for t in tricklers:
                t.close()
    drops = [r.getMessage() for r in caplog.records if "dropped: no complete message for" in r.getMessage()]
    assert len(drops) == srv.stats.dropped and any("devices" in d for d in drops)
    assert any("connections before HELLO" in d for d in drops) and all("its place went to" in d for d in drops)


def test_a_device_session_completes_under_64_trickling_connections(bundle: Bundle,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """32 connections trickle a FEATURE after their HELLO and 32 trickle their HELLO, a byte every 2 s, filling both
    pools (32 devices, 32 before HELLO); a device still gets in, taking the place of one of each, and completes its
    session as fast as without them."""
    feature = protocol.feature(0, 48, Payload.of_bytes(b"q" * 4000))
    with caplog.at_level(logging.WARNING, logger="engine.deploy"), \
            CoinferenceServer(bundle, read_timeout=30.0) as srv:
        tricklers = [_Trickler(srv, feature, hello=True, every=2.0) for _ in range(32)]
        tricklers += [_Trickler(srv, protocol.hello(VARIANT), hello=False, every=2.0) for _ in range(32)]
        try:
            _wait(lambda: srv.stats.active == 64)
            start = time.monotonic()
            with DeviceClient(bundle, *srv.address, rate_bps=8e6, timeout=10) as client:
                report = client.run(images(5))
            assert time.monotonic() - start < 10
            assert [t.label for t in report.timings] == bundle.predict(images(5)).tolist()
            assert srv.stats.dropped == 2 and srv.stats.rejected == 0
        finally:
            for t in tricklers:
                t.close()
    drops = [r.getMessage() for r in caplog.records if "dropped: no complete message for" in r.getMessage()]
    assert len(drops) == 2 and any("(32 devices)" in d for d in drops) and any("before HELLO" in d for d in drops)


# ------------------------------------------------------------------------------------------------------ JSCC hook


def test_channel_is_applied_on_the_server_before_decoding() -> None:
    analog = tiny_bundle("analog")
    x = images(3)
    zeros = int(analog.server(torch.zeros(1, 48)).argmax(1))
    with CoinferenceServer(analog, channel=torch.zeros_like) as srv, \
            DeviceClient(analog, *srv.address, rate_bps=8e6) as client:
        assert [t.label for t in client.run(x).timings] == [zeros] * 3
        assert all(t.payload_bits == 32 * 48 for t in client.run(x).timings)  # float32 values on the wire
    assert resolve_channel(None) is None


def test_bundle_channel_spec_is_resolved_from_the_registry() -> None:
    pytest.importorskip("engine.coding.channels")
    channel = resolve_channel({"name": "bsc", "p": 0.5, "reals_per_use": 1, "train_range": None})
    assert channel.condition == 0.5 and not channel.training
    x = torch.ones(1, 4000)
    flipped = float((channel(x) < 0).float().mean())
    assert 0.45 < flipped < 0.55  # half the bits flip at p = 0.5
    assert resolve_channel({"name": "awgn", "snr_db": 3.0}).condition == 3.0


def test_modelled_latency() -> None:
    row = {"device_flops": 2e9, "server_flops": 4e9, "bits_actual": 8000, "coding_cpu_seconds": 0.01}
    terms = modelled_latency(row, 1e9, 2e9, 8e3 * 10, delay_s=0.05)
    assert terms == pytest.approx({"t_device": 2.0, "t_transmit": 0.15, "t_server": 2.0, "latency": 4.15})
    deployed = modelled_latency(row, 1e9, 2e9, 8e3 * 10, overheads=Overheads(per_image_s=0.002, framing_bits=800))
    assert deployed == pytest.approx({"t_device": 2.0, "t_transmit": 0.1, "t_server": 2.0, "t_coding": 0.01,
                                      "t_overhead": 0.012, "latency": 4.122})


def test_runtime_overhead_of_a_null_session() -> None:
    """The null session's programs compute nothing; what it measures is the runtime's own per-image cost, which is
    small and positive, and pacing adds no more than the modelled time of its bytes would (which is subtracted)."""
    bundle = null_bundle((1, 4, 4), classes=3)
    assert bundle.predict(torch.zeros(2, 1, 4, 4, dtype=torch.uint8)).tolist() == [0, 0]
    assert bundle.coding_seconds(torch.zeros(3, 1, 4, 4, dtype=torch.uint8)) > 0
    device_s, server_s = bundle.program_seconds(torch.zeros(3, 1, 4, 4, dtype=torch.uint8))
    assert 0 < device_s < 0.1 and 0 < server_s < 0.1
    assert bundle.program_seconds(torch.zeros(0, 1, 4, 4, dtype=torch.uint8)) == (0.0, 0.0)
    free = runtime_overhead_s(math.inf, images=10, input_shape=(1, 4, 4), classes=3)
    paced = runtime_overhead_s(8e3 * 1000, images=10, input_shape=(1, 4, 4), classes=3)
    assert 0 < free < 0.1 and 0 <= paced < 0.1


# ------------------------------------------------------------------------------------------------------ processes


def test_serve_and_device_commands(fresh_cache: Path, tmp_cache: Path, small_data: ImageData,
                                   tmp_path: Path) -> None:
    """A real exported bundle, served by `python -m engine serve` and driven by `python -m engine device`."""
    ctx = RunContext(small_data, PROFILES.get("smoke"), tmp_cache)
    cfg = VariantConfig.make("original", "conv5_x", ctx.profile.base_config(small_data.fingerprint), bits=8)
    out = write_bundle(cfg, ctx, tmp_path / "bundle.zip")
    with served(out, fresh_cache, "original @ conv5_x") as (address, env):
        device = subprocess.run([sys.executable, "-m", "engine", "device", "--bundle", str(out), "--server", address,
                                 "--rate", "100kB/s", "--images", "12", "--threads", "1"], cwd=PROJECT_ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert device.returncode == 0, device.stderr
        assert "12 images over 100 kB/s: latency median" in device.stdout and "p95" in device.stdout
        assert "accuracy" in device.stdout and "bytes on the wire" in device.stdout
        bad = subprocess.run([sys.executable, "-m", "engine", "device", "--bundle", str(out), "--server", "nohost",
                              "--images", "1"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 2 and "HOST:PORT" in bad.stderr and "Traceback" not in bad.stderr
    shutil.rmtree(tmp_path / "bundle.zip", ignore_errors=True)


def test_idle_slowdown_is_a_ratio_held_at_the_ends() -> None:
    from engine.deploy.timing import idle_slowdown

    slowdown = idle_slowdown((0.001, 0.002), width=0.0625, repeats=3)
    assert slowdown(1e-6) == 1.0  # below a tenth of the shortest idle time: warm
    assert slowdown(10.0) == slowdown(0.002) >= 1.0  # held at the longest
    assert 1.0 <= slowdown(0.0015) <= max(slowdown(0.001), slowdown(0.002))
    with pytest.raises(ValueError):
        idle_slowdown(())
    with pytest.raises(ValueError):
        idle_slowdown((0.0, 0.01))


def test_idle_curve_interpolates_on_log_idle_time() -> None:
    from engine.deploy.timing import idle_curve

    curve = idle_curve((0.001, 0.01), (2.0, 4.0), warm=1.0)
    assert curve(0.0) == curve(1e-4) == 1.0  # a tenth of the shortest idle time and below: warm
    assert curve(0.001) == 2.0 and curve(10.0) == 4.0  # measured, then held at the longest
    assert curve(math.sqrt(0.001 * 0.01)) == pytest.approx(3.0)  # halfway on log idle time
    assert curve(math.sqrt(1e-4 * 1e-3)) == pytest.approx(1.5)


def test_coding_after_idling_times_the_coding_only() -> None:
    """`coding_seconds(idle_s=...)` sleeps before each image's coding and leaves the sleep out of its figure;
    `cold_coding_seconds` is that figure as a function of the idle time, the back-to-back one when warm."""
    from engine.deploy.timing import cold_coding_seconds

    bundle = null_bundle((1, 4, 4), classes=3)
    images = torch.zeros(4, 1, 4, 4, dtype=torch.uint8)
    start = time.perf_counter()
    after_sleep = bundle.coding_seconds(images, idle_s=0.02)
    assert time.perf_counter() - start >= 4 * 0.02 and 0 < after_sleep < 0.02
    coding = cold_coding_seconds(bundle, images, (0.001, 0.002))
    assert all(0 < coding(idle) < 0.01 for idle in (0.0, 0.001, 0.0015, 1.0))
    with pytest.raises(ValueError):
        cold_coding_seconds(bundle, images, ())
