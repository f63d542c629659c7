"""A device session while slow clients hold the server: `python -m engine serve` of a tiny synthetic bundle (two
small random programs, entropy-coded symbols; no training, `bench.common.tiny_bundle`) with its default limits (32
devices, 32 connections before HELLO, 60 s per message) in a second process, and a device client in this one: first
undisturbed, then while --trickle connections are held open against the same server, each sending one byte every
--every seconds (half trickle a HELLO, half a FEATURE after theirs; one dropped by the server reconnects, as an
attacker would). After a session that warms the server up, per phase: the end-to-end latency of the sessions' images
(median, p95), how long the device took to be admitted (connect to WELCOME), and the connections the server logged as
dropped to make room.
Run: python bench/bench_trickle.py [--images 50] [--rate 100kB/s] [--trickle 64] [--every 3] [--repeats 3]"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import tiny_bundle  # noqa: E402
from engine.deploy import protocol  # noqa: E402
from engine.deploy.bundle import Bundle, load_bundle  # noqa: E402
from engine.deploy.client import DeviceClient  # noqa: E402
from engine.latency import to_rate_bps  # noqa: E402


class Server:
    """`python -m engine serve` of a bundle on a free port, its log lines collected."""

    def __init__(self, bundle: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--bundle", str(bundle), "--port", "0",
                                      "--threads", "1"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        first = self.proc.stdout.readline()
        if " on " not in first:
            raise SystemExit(f"the server did not start: {first.strip()}")
        host, port = first.split(" on ")[1].split(";")[0].rsplit(":", 1)
        self.address = (host, int(port))
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def drops(self) -> int:
        return sum("dropped: no complete message" in line for line in self.lines)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Tricklers:
    """`n` connections that each send one byte every `every` seconds (staggered), from one thread: the first half
    trickle a HELLO of about 4 kB, the others say HELLO at once and trickle a FEATURE of 9 kB. One that the server
    closes (its ERROR frame or the end of its stream) connects again."""

    def __init__(self, address: tuple[str, int], variant: str, n: int, every: float) -> None:
        self.address, self.variant, self.every = address, variant, every
        hello = json.dumps({"variant": variant, "pad": "x" * 3900}).encode()
        self.messages = [protocol.pack(protocol.HELLO, hello), protocol.feature(0, 48, b"q" * 9000)]
        self.socks: list[tuple[socket.socket, int, float, bool]] = []  # socket, bytes sent, next send, after HELLO
        self.reconnects, self.stop = 0, threading.Event()
        for i in range(n):
            self.socks.append(self._open(after_hello=i >= n // 2, first=time.monotonic() + every * i / n))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self, after_hello: bool, first: float) -> tuple[socket.socket, int, float, bool]:
        sock = socket.create_connection(self.address, timeout=30)
        if after_hello:
            sock.sendall(protocol.hello(self.variant))
            frame = protocol.read_frame(sock)
            if frame is None or frame.kind != protocol.WELCOME:
                raise SystemExit("a trickler was not admitted")
        return sock, 0, first, after_hello

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            readable = select.select([s for s, *_ in self.socks], [], [], 0)[0]
            for i, (sock, sent, due, after_hello) in enumerate(self.socks):
                if sock in readable or (time.monotonic() >= due and not self._send(sock, sent, after_hello)):
                    sock.close()  # the server closed it (a drop or its deadline): come back
                    self.reconnects += 1
                    self.socks[i] = self._open(after_hello, time.monotonic() + self.every)
                elif time.monotonic() >= due:
                    self.socks[i] = (sock, sent + 1, due + self.every, after_hello)

    def _send(self, sock: socket.socket, sent: int, after_hello: bool) -> bool:
        message = self.messages[after_hello]
        try:
            sock.sendall(message[sent:sent + 1])
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock, *_ in self.socks:
            sock.close()


def session(bundle: Bundle, address: tuple[str, int], images: torch.Tensor, rate_bps: float) -> tuple[float, list]:
    """(seconds from connect to WELCOME, the images' end-to-end latencies) of one device session."""
    bundle.warm_up("device")
    client = DeviceClient(bundle, *address, rate_bps)
    start = time.perf_counter()
    client.connect()
    admitted = time.perf_counter() - start
    try:
        return admitted, client.run(images).latencies
    finally:
        client.close()


def phase(name: str, bundle: Bundle, server: Server, images: torch.Tensor, rate_bps: float, repeats: int,
          held: int) -> dict:
    drops = server.drops()
    runs = [session(bundle, server.address, images, rate_bps) for _ in range(repeats)]
    latencies = [t for _, lat in runs for t in lat]
    return {"phase": name, "held": held, "images": len(latencies),
            "admitted_ms": statistics.median(a for a, _ in runs) * 1e3,
            "median_ms": statistics.median(latencies) * 1e3, "p95_ms": float(np.percentile(latencies, 95)) * 1e3,
            "dropped": server.drops() - drops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50, help="images per session (default 50)")
    parser.add_argument("--rate", default="100kB/s", help="the device's link rate (default 100kB/s)")
    parser.add_argument("--trickle", type=int, default=64, help="trickling connections (default 64)")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between a trickler's bytes (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="sessions per phase (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="coinfer-trickle-") as tmp:
        path = tiny_bundle(Path(tmp) / "bundle")
        bundle, server = load_bundle(path), Server(path)
        try:
            rate = to_rate_bps(args.rate)
            session(bundle, server.address, images, rate)  # warm: the server's programs settle over their first calls
            rows = [phase("undisturbed", bundle, server, images, rate, args.repeats, 0)]
            tricklers = Tricklers(server.address, bundle.id, args.trickle, args.every)
            try:
                time.sleep(2 * args.every)  # every trickler has sent a byte or two: both pools are full
                rows.append(phase(f"{args.trickle} trickling", bundle, server, images, rate, args.repeats,
                                  len(tricklers.socks)))
                reconnects = tricklers.reconnects
            finally:
                tricklers.close()
        finally:
            server.stop()
    print(f"device sessions of {args.images} images at {args.rate} against `python -m engine serve` (defaults: 32 "
          f"devices, 32 connections before HELLO, 60 s per message), {args.repeats} sessions per phase; tricklers "
          f"send a byte every {args.every:g} s and reconnected {reconnects} times")
    print()
    print("| phase | connections held | admitted (connect to WELCOME) | latency median | latency p95 | images | "
          "dropped to make room |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['phase']} | {r['held']} | {r['admitted_ms']:.1f} ms | {r['median_ms']:.1f} ms | "
              f"{r['p95_ms']:.1f} ms | {r['images']} | {r['dropped']} |")


if __name__ == "__main__":
    main()
