"""The device side of real co-inference: runs the device program and the encoder on each image, sends the actual
bitstream paced at the link rate, and times every image (`SessionReport`); `live_session` runs a local server
thread and a client for the dashboard. Importing it imports no torch: `DeviceClient` drives any `DevicePart`, a
TorchScript `Bundle` or the onnxruntime `engine.deploy.onnx_device.OnnxDevice`."""

from __future__ import annotations

import logging
import math
import socket
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from engine.deploy import protocol
from engine.deploy.link import TokenBucket, send_paced
from engine.deploy.protocol import ProtocolError
from engine.entropy.payload import Payload
from engine.errors import UserError

if TYPE_CHECKING:
    import torch

    from engine.deploy.bundle import Bundle

log = logging.getLogger(__name__)


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
    payload_bits: int
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
                + f", {self.wire_bytes:,} bytes on the wire ({self.mean('payload_bits'):.0f} payload bits per image)")


class DevicePart(Protocol):
    """What a device runs: its bundle's id, its program on one uint8 image and the coding of what it sends."""

    @property
    def id(self) -> str: ...

    def warm_up(self, side: str = "both", calls: int = 3) -> None: ...

    def device_output(self, image: Any) -> Any: ...

    def encode(self, sent: Any) -> tuple[Payload, int]: ...


class DeviceClient:
    """The device: runs the bundle's device program and encoder on each image, sends the bitstream through a token
    bucket at `rate_bps` (after `delay_s` of propagation delay), and waits for the label."""

    def __init__(self, bundle: DevicePart, host: str, port: int, rate_bps: float, *, delay_s: float = 0.0,
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

    def infer(self, image: torch.Tensor | np.ndarray, truth: int | None = None) -> ImageTiming:
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
                           server_s, end - start, payload.bits, len(message))

    def run(self, images: torch.Tensor | np.ndarray, labels: Iterable[int] | None = None,
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
    from engine.deploy.server import CoinferenceServer

    with CoinferenceServer(bundle) as server:
        host, port = server.address
        with DeviceClient(bundle, host, port, rate_bps, delay_s=delay_s) as client:
            return client.run(images, labels, progress)


# ------------------------------------------------------------------------------------------------------ the model
