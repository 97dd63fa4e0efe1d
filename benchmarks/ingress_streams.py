"""`benchmarks/ingress.py --open-streams N`: POST /push with N device event streams open, against none.

Two real ingress processes run side by side on one redis-server (db 0 and db 1): one holds N open
`GET /devices/{deviceId}/events` streams (one device each, opened by a holder process that also feeds
their Redis streams with events, so that ingress's event loop really serves them), the other none.
Every other stream is never read: a slow client whose socket buffers fill, so its sends block (the
issue: a slow client never blocks `/push`). The same requests go to both in alternating chunks on
one keep-alive connection each, so drift in the load of a shared machine hits both alike, and the
p50 ratio is taken within each round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

from benchmarks.ingress_bench import Bench, process_cpu_s
from benchmarks.ingress_bodies import generate_bodies, http_request
from benchmarks.ingress_client import CpuProbe, send_interleaved
from benchmarks.ingress_servers import Server
from benchmarks.ingress_stats import Run, median_run, summarize

SECRET_ENV = "DEVICE_TOKEN_SECRET"
BENCH_SECRET = "benchmark-device-token-secret"
P50_TARGET = 1.10  # ours p50 with N open streams / ours p50 without must not exceed this
OPEN_TIMEOUT_S = 60.0
EVENT_BYTES = 1000  # the `data` of each fed event: a chat message with its metadata
STREAMS_CHUNK = 100  # requests per chunk when --interleave is not given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--open-streams",
        type=int,
        default=0,
        metavar="N",
        help="also compare ours with N device event streams open (half of them never read) against none",
    )
    parser.add_argument(
        "--stream-events",
        type=float,
        default=50.0,
        metavar="PER_S",
        help="with --open-streams: events per second XADDed across those devices' streams",
    )


def configure_server_environment(args: argparse.Namespace) -> None:
    """Before the servers start: the ingress serves device streams only with a token secret."""
    if args.open_streams:
        os.environ.setdefault(SECRET_ENV, BENCH_SECRET)


async def _hold(port: int, count: int, secret: str, redis_url: str, events_per_s: float, pipe: Pipe) -> None:
    import redis.asyncio as aioredis

    from shared import device_tokens, keys

    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for i in range(count):
        device = f"bench-stream-{i}"
        token, _ = device_tokens.issue(secret, device, 3600, time.time())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = f"GET /devices/{device}/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}"
        writer.write(request.encode() + b"\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"stream {i} refused: {head[:200]!r}")
        streams.append((reader, writer))

    async def drain(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    readers = [asyncio.create_task(drain(reader)) for reader, _ in streams[::2]]  # the odd ones: slow
    client = aioredis.Redis.from_url(redis_url)
    data = '{"type":"Message","text":"' + "x" * EVENT_BYTES + '"}'
    pipe.send("open")
    sent, started = 0, time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        while not await loop.run_in_executor(None, pipe.poll, 0):
            due = int((time.monotonic() - started) * events_per_s)
            for n in range(sent, due):
                fields = {"type": "Message", "sessionId": "s", "index": n, "data": data}
                await client.xadd(keys.stream(f"bench-stream-{n % count}"), fields)  # type: ignore[arg-type]
            sent = max(sent, due)
            await asyncio.sleep(0.01)
    finally:
        for task in readers:
            task.cancel()
        for _, writer in streams:
            writer.close()
        await client.aclose()


def _holder(port: int, count: int, secret: str, redis_url: str, events_per_s: float, pipe: Pipe) -> None:
    try:
        asyncio.run(_hold(port, count, secret, redis_url, events_per_s, pipe))
    except Exception as exc:  # reported to the parent, which stops the benchmark with it
        pipe.send(f"failed: {exc!r}")


@contextlib.contextmanager
def open_streams(port: int, redis_url: str, count: int, events_per_s: float) -> Iterator[None]:
    """`count` streams held open on the ingress at `port` (a holder process) until the block ends."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe()
    process = context.Process(
        target=_holder,
        args=(port, count, os.environ[SECRET_ENV], redis_url, events_per_s, sender),
        daemon=True,
    )
    process.start()
    try:
        if not receiver.poll(OPEN_TIMEOUT_S):
            raise RuntimeError(f"{count} streams did not open within {OPEN_TIMEOUT_S} s")
        message = receiver.recv()
        if message != "open":
            raise RuntimeError(f"stream holder: {message}")
        yield
    finally:
        with contextlib.suppress(OSError):
            receiver.send("stop")
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)


def _probe(bench: Bench, server: Server) -> CpuProbe:
    def probe() -> tuple[float, float]:
        cpu = bench.flush.info("cpu")
        return process_cpu_s(server.process.pid), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    return probe


def run_open_streams(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """Two real ingresses, one with N streams open, the same requests to both in alternating chunks;
    the ratio of their p50s, per round and of the medians."""
    count = args.open_streams
    chunk = args.interleave or STREAMS_CHUNK
    bodies = generate_bodies(args.warmup + args.requests, seed=args.seed, prefix="s-")
    requests = [http_request(b) for b in bodies]
    warmup, measured = requests[: args.warmup], requests[args.warmup :]
    base = bench.servers["ours"]
    redis_url = base_redis_url(bench)
    print()
    print(
        f"ours with {count} device event streams open (every other one never read; "
        f"{args.stream_events:.0f} events/s fed to them) against ours with none: two ingress processes on "
        f"one redis-server (db 0 and db 1), the same requests to both alternating every {chunk}, "
        f"{args.rounds} rounds"
    )
    runs: dict[str, list[Run]] = {"none": [], "open": []}
    with tempfile.TemporaryDirectory(prefix="gms-bench-streams-") as tmp:
        loaded = Server("ours", redis_url.rsplit("/", 1)[0] + "/1", Path(tmp))
        try:
            loaded.wait_ready()
            with open_streams(loaded.port, redis_url.rsplit("/", 1)[0] + "/1", count, args.stream_events):
                for round_no in range(args.rounds):
                    bench.flush.flushdb()  # db 0; db 1 holds the open streams' entries (and pushes)
                    ports = {"none": base.port, "open": loaded.port}
                    probes = {"none": _probe(bench, base), "open": _probe(bench, loaded)}
                    results = send_interleaved(ports, warmup, measured, chunk, probes)
                    for mode, result in results.items():
                        run = summarize(mode, *result)
                        runs[mode].append(run)
                        label = f"{count} streams open" if mode == "open" else "no streams"
                        print(
                            f"  round {round_no + 1}/{args.rounds}  {label:<20} p50 {run.p50_us:8.1f} us  "
                            f"p99 {run.p99_us:8.1f} us  {run.rate:8.0f} req/s  ingress CPU "
                            f"{run.server_cpu_us or 0:6.1f} us/req"
                            + (f"  ({run.non_200} non-200!)" if run.non_200 else "")
                        )
        finally:
            loaded.stop()
    medians = {mode: median_run(r) for mode, r in runs.items()}
    ratio = medians["open"]["p50_us"] / medians["none"]["p50_us"]
    per_round = [o.p50_us / n.p50_us for o, n in zip(runs["open"], runs["none"], strict=True)]
    cpu_ratio = medians["open"].get("server_cpu_us", 0) / (medians["none"].get("server_cpu_us") or 1)
    ok = ratio <= P50_TARGET
    print(
        f"p50 with {count} open / p50 with none = {ratio:5.3f} (per round "
        f"{', '.join(f'{r:.3f}' for r in per_round)}; target <= {P50_TARGET})  {'PASS' if ok else 'FAIL'}"
    )
    print(
        f"p99 ratio {medians['open']['p99_us'] / medians['none']['p99_us']:5.3f}, ingress CPU per push "
        f"ratio {cpu_ratio:5.3f} (information)"
    )
    return {
        "count": count,
        "events_per_s": args.stream_events,
        "chunk": chunk,
        "rounds": {mode: [asdict(r) for r in rs] for mode, rs in runs.items()},
        "median": medians,
        "p50_ratio": {"value": ratio, "per_round": per_round, "target_max": P50_TARGET, "pass": ok},
        "server_cpu_ratio": cpu_ratio,
    }


def base_redis_url(bench: Bench) -> str:
    kwargs = bench.flush.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"
