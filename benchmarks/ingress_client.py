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
        _warm_up(client, warmup)
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
    return latencies, elapsed_s, _outcomes(replies), cpu


def send_interleaved(
    ports: dict[str, int],
    warmup: Sequence[bytes],
    measured: Sequence[bytes],
    chunk: int,
    probes: dict[str, CpuProbe],
) -> dict[str, tuple[list[int], float, Counter[bytes], tuple[float, float, float]]]:
    """`send_sequence` against every target in one pass: a keep-alive connection each, the measured
    requests in chunks of `chunk`, each chunk sent to every target in turn (who goes first rotates), so
    drift in the machine's load hits all targets alike. Wall and CPU time are summed per target over its
    chunks (the probes are read between chunks, outside the timed requests)."""
    clients = {target: Client(port) for target, port in ports.items()}
    targets = list(clients)
    latencies = {t: [0] * len(measured) for t in targets}
    replies: dict[str, list[tuple[int, bytes]]] = {t: [] for t in targets}
    elapsed_s = dict.fromkeys(targets, 0.0)
    cpu = {t: [0.0, 0.0, 0.0] for t in targets}
    clock = time.perf_counter_ns
    try:
        for target in targets:
            _warm_up(clients[target], warmup)
        gc.collect()
        gc.disable()  # the client's own collector must not land inside a timed request
        try:
            for k, start in enumerate(range(0, len(measured), chunk)):
                for target in targets[k % len(targets) :] + targets[: k % len(targets)]:
                    client, times, got = clients[target], latencies[target], replies[target]
                    before = (*probes[target](), time.process_time())
                    chunk_started = clock()
                    for i in range(start, min(start + chunk, len(measured))):
                        t0 = clock()
                        got.append(client.post(measured[i]))
                        times[i] = clock() - t0
                    elapsed_s[target] += (clock() - chunk_started) / 1e9
                    after = (*probes[target](), time.process_time())
                    for j in range(3):
                        cpu[target][j] += after[j] - before[j]
        finally:
            gc.enable()
    finally:
        for client in clients.values():
            client.close()
    return {
        t: (latencies[t], elapsed_s[t], _outcomes(replies[t]), (cpu[t][0], cpu[t][1], cpu[t][2]))
        for t in targets
    }


def _warm_up(client: Client, warmup: Sequence[bytes]) -> None:
    for request in warmup:
        status, reply = client.post(request)
        if status != 200:
            raise RuntimeError(f"warm-up request failed: {status} {reply[:200]!r}")


def _outcomes(replies: list[tuple[int, bytes]]) -> Counter[bytes]:
    return Counter(
        reply if status == 200 else f"HTTP {status} ".encode() + reply[:80] for status, reply in replies
    )


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
