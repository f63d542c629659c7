"""The link between device and server: a token bucket that paces the sender at the link rate, and host:port parsing."""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable

from engine.errors import UserError

log = logging.getLogger(__name__)


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
