"""The sender of benchmarks/ingress.py: one keep-alive connection, one request at a time."""

from __future__ import annotations

import gc
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection as Pipe
from multiprocessing.synchronize import Barrier


class Client:
    """A minimal HTTP/1.1 keep-alive client on a raw socket: requests are pre-encoded, so the client's
    own cost per request is one sendall and (usually) one recv, the same for every target."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def post(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        while end < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buffer += chunk
            end = buffer.find(b"\r\n\r\n")
        head = buffer[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise ConnectionError(f"reply without content-length: {head[:200]!r}")
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end > 0 else len(head)])
        start = end + 4
        while len(buffer) < start + length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buffer += chunk
        self.buffer = buffer[start + length :]
        return int(buffer[9:12]), buffer[start : start + length]

    def close(self) -> None:
        self.sock.close()


CpuProbe = Callable[[], tuple[float, float]]  # cumulative CPU seconds of (server process, redis-server)


def send_sequence(
    port: int,
    warmup: Sequence[bytes],
    measured: Sequence[bytes],
    barrier: Barrier | None = None,
    probe: CpuProbe | None = None,
    pace_per_s: float | None = None,
) -> tuple[list[int], float, Counter[bytes], tuple[float, float, float] | None]:
    """Warm up, then time each request.

    With `pace_per_s`, request i leaves no earlier than i / pace_per_s after the first (a GMS node under
    a given load, still one request at a time); latency is timed from when it actually leaves.

    Returns per-request latencies (ns), wall time (s), the replies and, with a probe, the CPU seconds
    the server, redis-server and this client spent over the measured requests.
    """
    client = Client(port)
    try:
        for request in warmup:
            status, reply = client.post(request)
            if status != 200:
                raise RuntimeError(f"warm-up request failed: {status} {reply[:200]!r}")
        if barrier is not None:
            barrier.wait()
        latencies = [0] * len(measured)
        replies: list[tuple[int, bytes]] = []
        gc.collect()
        before = (*probe(), time.process_time()) if probe else None
        gc.disable()  # the client's own collector must not land inside a timed request
        try:
            clock = time.perf_counter_ns
            interval_ns = int(1e9 / pace_per_s) if pace_per_s else 0
            started = clock()
            for i, request in enumerate(measured):
                if interval_ns:
                    wait_ns = started + i * interval_ns - clock()
                    if wait_ns > 0:
                        time.sleep(wait_ns / 1e9)
                t0 = clock()
                replies.append(client.post(request))
                latencies[i] = clock() - t0
            elapsed_s = (clock() - started) / 1e9
        finally:
            gc.enable()
        cpu = None
        if probe and before:
            server_s, redis_s = probe()
            cpu = (server_s - before[0], redis_s - before[1], time.process_time() - before[2])
    finally:
        client.close()
    outcomes: Counter[bytes] = Counter(
        reply if status == 200 else f"HTTP {status} ".encode() + reply[:80] for status, reply in replies
    )
    return latencies, elapsed_s, outcomes, cpu


def sender_process(
    port: int,
    warmup: list[bytes],
    measured: list[bytes],
    barrier: Barrier,
    results: Pipe,
    pace_per_s: float | None,
) -> None:
    """One of K concurrent senders (a process: the client must not share a GIL with the others)."""
    try:
        latencies, elapsed_s, outcomes, _ = send_sequence(
            port, warmup, measured, barrier, pace_per_s=pace_per_s
        )
        results.send(("ok", latencies, elapsed_s, outcomes))
    except BaseException as exc:
        barrier.abort()
        results.send(("error", repr(exc), 0.0, Counter()))
    finally:
        results.close()
