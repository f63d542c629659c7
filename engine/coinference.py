"""Real co-inference of an exported bundle: a server process that decodes bitstreams and runs the server program, a
device client that runs the device program and the encoder on images and sends the actual bitstream over a link
whose rate a token bucket enforces on the sender, and the latency model (Shao & Zhang 2020: F_dev / C_dev + B / R +
F_srv / C_srv) beside what was measured.

API
    TokenBucket(rate_bytes_per_s, burst_bytes=0)       the sender's rate limit; `send_paced` writes through it
    CoinferenceServer(bundle, host, port, ...)         threaded TCP server; start()/stop() or serve_forever()
    DeviceClient(bundle, host, port, rate_bps, ...)    connect, then infer(image) per image, or run(images, labels)
    SessionReport                                      per-image timings; median, p95, accuracy, bytes on the wire
    live_session(bundle, images, labels, rate_bps)     a local server thread and a client, for the dashboard
    session_terms(report, model)                       measured against modelled terms, a tidy table
    cpu_flops_per_s(width)                             this CPU's effective FLOP/s on the base model at batch 1
    idle_slowdown(idle_s, width)                       how much slower a program runs after idling, by idle time
    cold_coding_seconds(bundle, images, idle_s)        a bundle's coding time per image after idling, by idle time
    modelled_latency(row, flops_per_s, rate_bps)       the latency model's terms for a results row
    runtime_overhead_s(rate_bps)                       the runtime's fixed per-image cost, from a null session

JSCC bundles (coding "analog") send the encoder's real values; the server passes them through the channel named in
the bundle (`engine.coding.channels.CHANNELS`, the same simulation as in training) before decoding, or through the
`channel` callable given to the server."""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import socket
import socketserver
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine import protocol
from engine.errors import UserError
from engine.export import Bundle
from engine.latency import OVERHEAD_COLUMNS, Overheads, custom_device, latency_table
from engine.protocol import ProtocolError, Truncated

log = logging.getLogger(__name__)

Channel = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------------------ the link


class TokenBucket:
    """A token bucket in bytes: tokens accrue at `rate` per second up to `burst`; taking n tokens when fewer are
    there waits until they have accrued (the bucket may go into debt, so waits of consecutive chunks add up to
    exactly n / rate). With burst 0 it is a pacer: every byte takes 1 / rate seconds on the link."""

    def __init__(self, rate_bytes_per_s: float, burst_bytes: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep) -> None:
        if not (math.isfinite(rate_bytes_per_s) and rate_bytes_per_s > 0) or burst_bytes < 0:
            raise UserError(f"a link rate must be positive and finite and a burst >= 0, got {rate_bytes_per_s} B/s, "
                            f"burst {burst_bytes} B")
        self.rate, self.burst = float(rate_bytes_per_s), float(burst_bytes)
        self.clock, self.sleep = clock, sleep
        self.tokens = self.burst
        self.last = clock()

    def reserve(self, n: int) -> float:
        """Take n tokens; the seconds to wait before the n bytes have gone (0 when the bucket had them)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        return max(0.0, -self.tokens / self.rate)

    def consume(self, n: int) -> None:
        wait = self.reserve(n)
        if wait > 0:
            self.sleep(wait)


def send_paced(sock: socket.socket, data: bytes, bucket: TokenBucket | None, chunk_bytes: int = 256) -> None:
    """Write one message at the bucket's rate, as a link carries a message queued whole: the bucket is charged for
    all of it at once, which fixes when its last byte has gone, and each chunk is written when the link has carried
    it. The schedule is per message, so a late wake-up (a busy CPU) delays one chunk, never the ones after it; no
    bucket: written at once."""
    if bucket is None:
        sock.sendall(data)
        return
    start = bucket.clock()
    begin = start + bucket.reserve(len(data)) - len(data) / bucket.rate  # when the link starts on this message
    view = memoryview(data)
    for i in range(0, len(view), chunk_bytes):
        piece = view[i:i + chunk_bytes]
        wait = begin + (i + len(piece)) / bucket.rate - bucket.clock()
        if wait > 0:
            bucket.sleep(wait)
        sock.sendall(piece)


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--server wants HOST:PORT, e.g. 127.0.0.1:8765, got {text!r}")
    return host.strip("[]"), int(port)


def resolve_channel(spec: Mapping[str, Any] | None) -> Channel | None:
    """The channel simulation a JSCC bundle names (its `spec`: name and condition, e.g. {"name": "awgn", "snr_db":
    10}), built from `engine.coding.channels.CHANNELS` in eval mode (fixed condition, seeded noise); None for none."""
    if not spec:
        return None
    try:
        channels = importlib.import_module("engine.coding.channels")
        cls = channels.CHANNELS.get(str(spec.get("name")))
    except (ModuleNotFoundError, AttributeError):
        raise UserError(f"this bundle sends over a simulated {spec.get('name')!r} channel, but this coinfer has no "
                        "channel registry (engine.coding.channels.CHANNELS): update coinfer") from None
    condition = spec.get(getattr(cls, "condition_name", "condition"))
    return cls(condition, None, int(spec.get("seed", 0))).eval()


# ------------------------------------------------------------------------------------------------------ the server


@dataclass
class ServerStats:
    connections: int = 0
    active: int = 0
    images: int = 0
    rejected: int = 0
    dropped: int = 0  # idle or trickling connections closed to make room for a newcomer
    reasons: list[str] = field(default_factory=list)  # the last rejection and drop reasons


@dataclass(eq=False)
class _Connection:
    """One connection as the server tracks it: a device once its HELLO was accepted, and since when it has been
    waiting for its current message (None while the server computes on one: it cannot be dropped then)."""

    sock: socket.socket
    peer: Any
    device: bool = False
    waiting_since: float | None = None
    dropped: str | None = None

    @property
    def name(self) -> str:
        return f"{self.peer[0]}:{self.peer[1]}"


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        self.server.app._serve_connection(self.request, self.client_address)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    app: CoinferenceServer


class CoinferenceServer:
    """The edge server: answers each device's FEATURE frames with the predicted label, one thread per connection.
    A malformed, truncated or oversized message is logged with its reason and costs only its own connection (or,
    when the framing is intact, only that message); the server keeps serving the others. Each message must arrive
    whole within `read_timeout` seconds of when the server starts waiting for it (however it trickles in). At most
    `max_clients` devices and `max_pending` connections yet to say HELLO are held: when full, a newcomer that
    speaks the protocol takes the place of the connection that has waited longest for a complete message (idle or
    trickling), which is logged and closed; a device is refused as busy only when every other one is being
    computed for. Listens on 127.0.0.1 unless told otherwise."""

    def __init__(self, bundle: Bundle, host: str = "127.0.0.1", port: int = 0, *,
                 max_payload: int = protocol.DEFAULT_MAX_PAYLOAD, channel: Channel | None = None,
                 read_timeout: float = 60.0, max_clients: int = 32, max_pending: int | None = None) -> None:
        self.bundle = bundle
        self.max_payload, self.read_timeout, self.max_clients = max_payload, read_timeout, max_clients
        self.max_pending = max_clients if max_pending is None else max_pending
        self.channel = channel if channel is not None else resolve_channel(bundle.meta.get("channel"))
        bundle.warm_up("server")
        self.stats = ServerStats()
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._thread: threading.Thread | None = None
        try:
            self._tcp = _TCPServer((host, port), _Handler)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
        self._tcp.app = self

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._tcp.server_address[:2]
        return str(host), int(port)

    def serve_forever(self) -> None:
        self._tcp.serve_forever(poll_interval=0.2)

    def start(self) -> CoinferenceServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="coinference-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._tcp.shutdown()
        self._tcp.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> CoinferenceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _reject(self, sock: socket.socket, peer: Any, reason: str, *, reply: bool = True) -> None:
        log.warning("rejected a message from %s:%s: %s", peer[0], peer[1], reason)
        with self._lock:
            self.stats.rejected += 1
            self.stats.reasons = [*self.stats.reasons[-19:], reason]
        if reply:
            with contextlib.suppress(OSError):
                sock.sendall(protocol.error(reason))

    def _make_room(self, conn: _Connection, device: bool) -> bool:
        """Room for `conn` among the devices (`device`) or the connections yet to say HELLO: when that pool is full,
        the one of it that has waited longest for a complete message is dropped; False when none can be."""
        with self._lock:
            pool = [c for c in self._connections if c.device == device and c is not conn and not c.dropped]
            if len(pool) < (self.max_clients if device else self.max_pending):
                conn.device = device
                return True
            waiting = [c for c in pool if c.waiting_since is not None]
            if not waiting:
                return False
            victim = min(waiting, key=lambda c: c.waiting_since or 0.0)
            waited = time.monotonic() - (victim.waiting_since or 0.0)
            victim.dropped = (f"dropped: no complete message for {waited:.1f} s while the server was full "
                              f"({len(pool)} {'devices' if device else 'connections before HELLO'}); its place went "
                              f"to {conn.name}")
            self.stats.dropped += 1
            self.stats.reasons = [*self.stats.reasons[-19:], victim.dropped]
            conn.device = device
        log.warning("%s %s", victim.name, victim.dropped)
        with contextlib.suppress(OSError), victim.sock.dup() as tell:  # the reason, if it fits without waiting
            tell.settimeout(0)
            tell.send(protocol.error(victim.dropped))
        with contextlib.suppress(OSError):
            victim.sock.shutdown(socket.SHUT_RDWR)  # its thread's read returns: it ends quietly
        return True

    def _read(self, conn: _Connection) -> protocol.Frame | None:
        """The connection's next frame, whole within `read_timeout` of now; droppable while it waits."""
        with self._lock:
            conn.waiting_since = time.monotonic()
        frame = protocol.read_frame(conn.sock, self.max_payload, deadline=conn.waiting_since + self.read_timeout)
        with self._lock:
            conn.waiting_since = None
        return frame

    def _serve_connection(self, sock: socket.socket, peer: Any) -> None:
        conn = _Connection(sock, peer, waiting_since=time.monotonic())
        with self._lock:
            self.stats.connections += 1
            self.stats.active += 1
            self._connections.add(conn)
        try:
            sock.settimeout(self.read_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self._make_room(conn, device=False):
                raise ProtocolError(f"server busy: {self.max_pending} connections are starting; retry later")
            self._converse(conn)
        except (ProtocolError, TimeoutError, OSError) as exc:
            if not conn.dropped:
                self._failed(conn, exc)
        finally:
            with self._lock:
                self.stats.active -= 1
                self._connections.discard(conn)

    def _failed(self, conn: _Connection, exc: Exception) -> None:
        """Log (and, when the framing allows, answer) why a connection ended."""
        if isinstance(exc, Truncated):
            self._reject(conn.sock, conn.peer, f"truncated message: {exc}", reply=False)
        elif isinstance(exc, ProtocolError):
            self._reject(conn.sock, conn.peer, str(exc))
        elif isinstance(exc, TimeoutError):
            self._reject(conn.sock, conn.peer, f"no complete message within {self.read_timeout:g} s", reply=False)
        else:
            log.info("connection from %s ended: %s", conn.name, exc)

    def _converse(self, conn: _Connection) -> None:
        sock = conn.sock
        frame = self._read(conn)
        if frame is None:
            return
        if frame.kind != protocol.HELLO:
            raise ProtocolError(f"expected HELLO first, got {frame.name}")
        variant = protocol.control_json(frame)["variant"]
        if variant != self.bundle.id:
            raise ProtocolError(f"this server runs variant {self.bundle.id}, the device runs {variant}")
        if not self._make_room(conn, device=True):
            raise ProtocolError(f"server busy: {self.max_clients} devices connected; retry later")
        sock.sendall(protocol.welcome(self.bundle.id, self.bundle.coding))
        while (frame := self._read(conn)) is not None:
            if frame.kind != protocol.FEATURE:
                raise ProtocolError(f"expected FEATURE, got {frame.name}")
            seq, count, stream = protocol.parse_feature(frame)
            try:
                start = time.perf_counter()
                received = self.bundle.received(stream, count)
                if self.channel is not None:
                    received = self.channel(received)
                decoded = time.perf_counter()
                label = int(self.bundle.logits(received).argmax(1))
                done = time.perf_counter()
            except (ValueError, RuntimeError) as exc:  # the framing is intact: reject this message only
                self._reject(sock, conn.peer, f"image {seq}: undecodable bitstream ({str(exc).splitlines()[0][:200]})")
                continue
            with self._lock:
                self.stats.images += 1
            sock.sendall(protocol.result(seq, label, decoded - start, done - decoded))


# ------------------------------------------------------------------------------------------------------ the device


@dataclass
class ImageTiming:
    """One image's trip, in seconds: device program, entropy encoding, the paced send (propagation delay
    included), the server's decoding and program (as it reports them), and the end-to-end time."""

    seq: int
    label: int
    truth: int | None
    device_s: float
    encode_s: float
    transmit_s: float
    decode_s: float
    server_s: float
    total_s: float
    payload_bytes: int
    wire_bytes: int


@dataclass
class SessionReport:
    variant: str
    rate_bps: float
    delay_s: float
    timings: list[ImageTiming]

    @property
    def latencies(self) -> list[float]:
        return [t.total_s for t in self.timings]

    @property
    def median_s(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p95_s(self) -> float:
        return float(np.percentile(self.latencies, 95))

    @property
    def accuracy(self) -> float | None:
        known = [t for t in self.timings if t.truth is not None]
        return sum(t.label == t.truth for t in known) / len(known) if known else None

    @property
    def wire_bytes(self) -> int:
        return sum(t.wire_bytes for t in self.timings)

    def mean(self, name: str) -> float:
        return float(np.mean([getattr(t, name) for t in self.timings]))

    def rows(self) -> list[dict[str, Any]]:
        return [asdict(t) for t in self.timings]

    def summary(self) -> str:
        acc = self.accuracy
        return (f"{len(self.timings)} images over {self.rate_bps / 8e3:g} kB/s: latency median "
                f"{self.median_s * 1e3:.1f} ms, p95 {self.p95_s * 1e3:.1f} ms"
                + (f", accuracy {acc:.2%}" if acc is not None else "")
                + f", {self.wire_bytes:,} bytes on the wire ({self.mean('payload_bytes'):.0f} B payload per image)")


class DeviceClient:
    """The device: runs the bundle's device program and encoder on each image, sends the bitstream through a token
    bucket at `rate_bps` (after `delay_s` of propagation delay), and waits for the label."""

    def __init__(self, bundle: Bundle, host: str, port: int, rate_bps: float, *, delay_s: float = 0.0,
                 burst_bytes: float = 0.0, chunk_bytes: int = 256, timeout: float = 120.0) -> None:
        if delay_s < 0:
            raise UserError(f"the propagation delay must be >= 0, got {delay_s}")
        self.bundle, self.host, self.port = bundle, host, port
        self.rate_bps, self.delay_s, self.chunk_bytes, self.timeout = rate_bps, delay_s, chunk_bytes, timeout
        self.bucket = TokenBucket(rate_bps / 8.0, burst_bytes) if math.isfinite(rate_bps) else None
        self.sock: socket.socket | None = None
        self._seq = 0

    def connect(self) -> DeviceClient:
        self.bundle.warm_up("device")
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise UserError(f"cannot reach the server at {self.host}:{self.port} ({exc.strerror or exc}); start it "
                            "with `python -m engine serve --bundle B`") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(protocol.hello(self.bundle.id))
        frame = self._reply()
        if frame.kind != protocol.WELCOME:
            raise UserError(f"the server did not accept this device: unexpected {frame.name}")
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> DeviceClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reply(self) -> protocol.Frame:
        assert self.sock is not None
        try:
            frame = protocol.read_frame(self.sock)
        except ProtocolError as exc:
            raise UserError(f"the server's reply is not valid: {exc}") from None
        if frame is None:
            raise UserError("the server closed the connection")
        if frame.kind == protocol.ERROR:
            raise UserError(f"the server rejected the message: {frame.payload.decode('utf-8', 'replace')}")
        return frame

    def infer(self, image: torch.Tensor, truth: int | None = None) -> ImageTiming:
        """One image end to end."""
        assert self.sock is not None, "connect() first"
        seq, self._seq = self._seq, self._seq + 1
        start = time.perf_counter()
        sent = self.bundle.device_output(image)
        computed = time.perf_counter()
        payload, count = self.bundle.encode(sent)
        message = protocol.feature(seq, count, payload)
        encoded = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        send_paced(self.sock, message, self.bucket, self.chunk_bytes)
        transmitted = time.perf_counter()
        frame = self._reply()
        end = time.perf_counter()
        if frame.kind != protocol.RESULT_KIND:
            raise UserError(f"expected a RESULT from the server, got {frame.name}")
        got, label, decode_s, server_s = protocol.parse_result(frame)
        if got != seq:
            raise UserError(f"the server answered image {got}, expected {seq}")
        return ImageTiming(seq, label, truth, computed - start, encoded - computed, transmitted - encoded, decode_s,
                           server_s, end - start, len(payload), len(message))

    def run(self, images: torch.Tensor, labels: Iterable[int] | None = None,
            progress: Callable[[int, int], None] | None = None) -> SessionReport:
        truths = list(labels) if labels is not None else [None] * len(images)
        timings = []
        for i, (image, truth) in enumerate(zip(images, truths, strict=True)):
            timings.append(self.infer(image, None if truth is None else int(truth)))
            if progress:
                progress(i + 1, len(images))
        return SessionReport(self.bundle.id, self.rate_bps, self.delay_s, timings)


def live_session(bundle: Bundle, images: torch.Tensor, labels: Iterable[int] | None, rate_bps: float, *,
                 delay_s: float = 0.0, progress: Callable[[int, int], None] | None = None) -> SessionReport:
    """A short session against a server thread on 127.0.0.1 (an ephemeral port), stopped afterwards."""
    with CoinferenceServer(bundle) as server:
        host, port = server.address
        with DeviceClient(bundle, host, port, rate_bps, delay_s=delay_s) as client:
            return client.run(images, labels, progress)


# ------------------------------------------------------------------------------------------------------ the model


def _traced_base(width: float, input_shape: tuple[int, int, int], classes: int) -> tuple[nn.Module, Any, torch.Tensor]:
    """The base ResNet18 of `width`, its TorchScript trace (as bundles run it) and a batch-1 input."""
    import warnings

    from engine.models import build_model

    model = build_model("resnet18", width, classes, input_shape[0]).eval()
    x = torch.zeros(1, *input_shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.jit.trace(model, x)
    return model, program, x


def cpu_flops_per_s(width: float = 0.25, input_shape: tuple[int, int, int] = (3, 32, 32), classes: int = 10,
                    repeats: int = 21) -> float:
    """This CPU's effective FLOP/s (2 per MAC) at batch 1 on the whole base ResNet18 of `width`, traced to TorchScript
    as bundles run it (about a third faster than eager on a CPU), with the current torch thread count: the device
    preset that makes the latency model describe this machine."""
    from engine.profile import count_flops, device_seconds

    model, program, x = _traced_base(width, input_shape, classes)
    return count_flops(model, x) / device_seconds(program, x, repeats=repeats, warmup=5)


def idle_slowdown(idle_s: Sequence[float], width: float = 0.25, input_shape: tuple[int, int, int] = (3, 32, 32),
                  classes: int = 10, repeats: int = 21) -> Callable[[float], float]:
    """How much longer the base model takes at batch 1 when called after sleeping, as a session calls its programs
    (once per image, idle for the rest of the pipeline): caches and clocks go cold. For each idle time of `idle_s`
    (seconds, > 0), the median over `repeats` of a cold call's time over the warm call just before its sleep (a
    ratio, so drifts of the CPU's speed cancel); returned as a function of the idle time, interpolated on log idle
    time from 1 at a tenth of the shortest, and held at the longest."""
    gaps = np.asarray(sorted(idle_s), dtype=float)
    if len(gaps) == 0 or gaps[0] <= 0:
        raise ValueError("idle_slowdown needs positive idle times")
    _, program, x = _traced_base(width, input_shape, classes)
    ratios = []
    with torch.no_grad():
        for _ in range(3):
            program(x)
        for gap in gaps:
            per = []
            for _ in range(repeats):
                program(x)
                start = time.perf_counter()
                program(x)
                warm = time.perf_counter() - start
                time.sleep(gap)
                start = time.perf_counter()
                program(x)
                per.append((time.perf_counter() - start) / warm)
            ratios.append(max(1.0, statistics.median(per)))
    return idle_curve(gaps, ratios, 1.0)


def idle_curve(idle_s: Sequence[float], values: Sequence[float], warm: float) -> Callable[[float], float]:
    """A quantity measured after each idle time of `idle_s` (rising, > 0) as a function of the idle time: `warm` at
    a tenth of the shortest, interpolated on log idle time between, held at the longest."""
    log_gaps, ys = np.log(np.r_[idle_s[0] / 10, idle_s]), np.r_[warm, values]

    def at(idle: float) -> float:
        return float(np.interp(math.log(max(idle, 1e-12)), log_gaps, ys))

    return at


def cold_coding_seconds(bundle: Bundle, images: torch.Tensor, idle_s: Sequence[float]) -> Callable[[float], float]:
    """The bundle's coding time per image (`Bundle.coding_seconds`) after each idle time of `idle_s` (seconds, > 0)
    and back to back, as a function of the idle time (`idle_curve`)."""
    gaps = sorted(float(g) for g in idle_s)
    if not gaps or gaps[0] <= 0:
        raise ValueError("cold_coding_seconds needs positive idle times")
    warm = bundle.coding_seconds(images)
    return idle_curve(gaps, [bundle.coding_seconds(images, g) for g in gaps], warm)


def modelled_latency(row: Mapping[str, Any], device_flops_per_s: float, server_flops_per_s: float, rate_bps: float,
                     delay_s: float = 0.0, overheads: Overheads | None = None) -> dict[str, float]:
    """The latency model's terms for a results row (seconds), by `engine.latency.latency_table`: F_dev / C_dev,
    B / R (+ the propagation delay), F_srv / C_srv and, with `overheads`, the measured coding time and the
    framing and runtime costs; `latency` is their sum."""
    table = pd.DataFrame([{"device_memory_bytes": math.nan, **dict(row)}])
    lat = latency_table(table, custom_device(device_flops_per_s, name="device"),
                        custom_device(server_flops_per_s, name="server"), rate_bps, overheads=overheads).iloc[0]
    terms = {c: float(lat[c]) for c in ("t_device", "t_transmit", "t_server", *OVERHEAD_COLUMNS) if c in lat.index}
    terms["t_transmit"] += delay_s
    terms["latency"] = float(lat["latency"]) + delay_s
    return terms


NULL_BUNDLE_ID = "null-session"


class _NullDevice(nn.Module):
    """A device program that computes nothing and sends label 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 1, dtype=torch.int64)


def null_bundle(input_shape: tuple[int, int, int] = (3, 32, 32), classes: int = 10) -> Bundle:
    """An in-memory bundle whose programs compute nothing: its sessions measure the runtime alone."""
    from engine.methods.original import OneHotLogits

    meta = {"id": NULL_BUNDLE_ID, "coding": "label", "num_classes": classes, "input_shape": list(input_shape)}
    return Bundle(Path(NULL_BUNDLE_ID), {}, meta, {}, {}, torch.jit.script(_NullDevice()),
                  torch.jit.script(OneHotLogits(classes)), None)


def runtime_overhead_s(rate_bps: float, images: int = 50, input_shape: tuple[int, int, int] = (3, 32, 32),
                       classes: int = 10) -> float:
    """The fixed per-image cost of this runtime at `rate_bps`: the median end-to-end time of a null session (programs
    that compute nothing, a one-byte payload) against a local server, less the modelled time of its bytes on the
    link. It is what `engine.latency.Overheads.per_image_s` stands for: program calls, pacing, the reply."""
    x = torch.zeros(images, *input_shape, dtype=torch.uint8)
    report = live_session(null_bundle(input_shape, classes), x, None, rate_bps)
    wire_bits = 8.0 * report.mean("wire_bytes")
    return max(0.0, report.median_s - (wire_bits / rate_bps if math.isfinite(rate_bps) else 0.0))


def session_terms(report: SessionReport, model: Mapping[str, float]) -> pd.DataFrame:
    """A tidy table (term, source, seconds) of a session's mean measured terms beside the modelled ones: device
    (the device program), coding (entropy encoding + decoding), transmit (the paced send), server (the server
    program) and other (the rest of the end-to-end time: the reply, scheduling). The paper's model has no coding or
    other term (0 here); a model with `Overheads` has t_coding and t_overhead."""
    parts = {"device": report.mean("device_s"), "coding": report.mean("encode_s") + report.mean("decode_s"),
             "transmit": report.mean("transmit_s"), "server": report.mean("server_s")}
    measured = {**parts, "other": max(0.0, float(np.mean(report.latencies)) - sum(parts.values()))}
    modelled = {"device": model["t_device"], "coding": model.get("t_coding", 0.0), "transmit": model["t_transmit"],
                "server": model["t_server"], "other": model.get("t_overhead", 0.0)}
    return pd.DataFrame([{"term": k, "source": source, "seconds": v} for source, terms in
                         (("measured", measured), ("modelled", modelled)) for k, v in terms.items()])
