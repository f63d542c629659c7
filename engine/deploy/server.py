"""The co-inference server: a threaded TCP server that decodes each device's bitstream (or passes JSCC values through
the bundle's channel) and runs the server program; each message has a deadline, and stalled peers are dropped before
a device that speaks the protocol is refused."""

from __future__ import annotations

import contextlib
import importlib
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.deploy import protocol
from engine.deploy.bundle import Bundle
from engine.deploy.protocol import ProtocolError, Truncated
from engine.errors import UserError

log = logging.getLogger(__name__)

Channel = Callable[[torch.Tensor], torch.Tensor]


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
