"""Benchmark POST /push as one GMS node sees it: sequential keep-alive requests, reply latency and rate.

Three servers take the same pre-generated bodies from the same client, in interleaved rounds:
  floor  a bare Starlette endpoint doing one async LPUSH of the raw body (nothing can be cheaper),
  naive  a Starlette endpoint calling RQ `Queue.enqueue` (the design this project replaces),
  ours   the real ingress, started as `gms-relay ingress`.
Targets (issue): ours p50 <= 1.3 x floor p50, ours rate >= 2 x naive rate, and with `--senders 4`
each concurrent sender's p99 < 2 x the single-sender p99.

    python benchmarks/ingress.py [--requests 5000] [--rounds 3] [--senders 4 [--pace 500]] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
# Run as a script, this file's folder comes first on sys.path and this file would shadow the `ingress`
# package: drop that folder and put the repo root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from multiprocessing.connection import Connection as Pipe  # noqa: E402
from multiprocessing.synchronize import Barrier  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any  # noqa: E402

import redis  # noqa: E402

from shared.redis_server import RedisServer, free_port  # noqa: E402
from tests.pushes import body, event, payload_message, trigger_message  # noqa: E402

TARGETS = ("floor", "naive", "ours")
LABELS = {"floor": "floor (LPUSH)", "naive": "naive (RQ enqueue)", "ours": "ours (ingress)"}
P50_TARGET = 1.3  # ours p50 / floor p50 must not exceed this
RATE_TARGET = 2.0  # ours rate / naive rate must reach this
SENDERS_P99_TARGET = 2.0  # each concurrent sender's p99 / single-sender p99 must stay under this
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


# --- the servers under test (run in child processes: `ingress.py --serve floor|naive`) ---------------


def floor_app(redis_url: str) -> Any:
    """One async LPUSH of the raw body: the least any durable ingress can do."""
    import redis.asyncio as aioredis
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    client = aioredis.Redis.from_url(redis_url)

    async def push(request: Request) -> Response:
        data = await request.body()
        await client.lpush("floor", data)
        return Response(b'{"status":"queued"}', media_type="application/json")

    return Starlette(routes=[Route("/push", push, methods=["POST"])])


def naive_app(redis_url: str) -> Any:
    """What a first implementation looks like: parse with `request.json()`, then `Queue.enqueue`.

    The enqueue is called directly from the async handler, blocking the event loop for its round trips,
    as most naive code does. With one sequential sender this is also the faster variant (no thread
    hand-off through run_in_threadpool), so the "ours >= 2 x naive" comparison is the conservative one.
    The queue is built once at start-up, again the cheaper choice.
    """
    from rq import Queue
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    queue = Queue("naive", connection=redis.Redis.from_url(redis_url))

    async def push(request: Request) -> Response:
        message = await request.json()
        if not isinstance(message, dict) or "deviceId" not in message:
            return JSONResponse({"error": "invalid_push"}, status_code=400)
        queue.enqueue("workers.jobs.drain", (await request.body()).decode())
        return JSONResponse({"status": "queued"})

    return Starlette(routes=[Route("/push", push, methods=["POST"])])


def serve_baseline(kind: str, port: int, redis_url: str) -> None:
    """Serve a baseline with the ingress's uvicorn settings (ingress/server.py): only the app differs."""
    import uvicorn

    from ingress.server import uvicorn_options

    app = floor_app(redis_url) if kind == "floor" else naive_app(redis_url)
    uvicorn.Server(uvicorn.Config(app, **uvicorn_options("127.0.0.1", port))).run()


class Server:
    """One server under test in a child process, on a free loopback port."""

    def __init__(self, kind: str, redis_url: str, log_dir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        env = {**os.environ, "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        if kind == "ours":
            args = ["-m", "shared.cli", "ingress", "--host", "127.0.0.1", "--port", str(self.port)]
            args += ["--processes", os.environ.get("BENCH_INGRESS_PROCESSES", "1")]
        else:
            args = [str(Path(__file__).resolve()), "--serve", kind, "--port", str(self.port)]
            args += ["--redis-url", redis_url]
        self.log_path = log_dir / f"{kind}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *args], cwd=_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(
                        f"{self.kind} server did not start on port {self.port}:\n{log}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- the bodies: one realistic mix, generated once, sent identically to every target ----------------


@dataclass
class Mix:
    triggers: int = 0
    resends: int = 0
    payloads: int = 0
    events: int = 0
    wakeups: int = 0


def generate_bodies(count: int, seed: int, prefix: str, mix: Mix | None = None) -> list[bytes]:
    """`count` distinct push bodies: ~80% reliable triggers, ~15% payload pushes, ~5% wake-ups.

    Triggers walk forward through a pool of live chats (position +1..3, a few resends with attempt + 1,
    a fifth with `message` as a string holding JSON, chats ending and new ones starting), so no two
    bodies are exact duplicates the ingress would drop early.
    """
    rng = random.Random(seed)
    mix = mix if mix is not None else Mix()
    chats = [[0, 0] for _ in range(64)]  # [position, attempt] per reliable chat
    chat_ids = list(range(64))
    payload_next = [0] * 32  # next transcript index per payload-mode chat
    next_chat = 64
    bodies: list[bytes] = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.80:
            slot = rng.randrange(len(chats))
            state = chats[slot]
            if state[0] > 0 and rng.random() < 0.05:
                state[1] += 1  # Chat Server resends the same trigger
                mix.resends += 1
            else:
                state[0] += rng.randint(1, 3)
                state[1] = 0
            chat = chat_ids[slot]
            message = trigger_message(state[0], state[1], session_id=f"{prefix}s{chat}", user_id=f"u{chat}")
            encoding = "string" if rng.random() < 0.2 else "object"
            bodies.append(body(message, device_id=f"{prefix}d{chat}", encoding=encoding))
            mix.triggers += 1
            if rng.random() < 0.02:  # the chat ends; a new one takes its slot
                chats[slot], chat_ids[slot], next_chat = [0, 0], next_chat, next_chat + 1
        elif roll < 0.95:
            slot = rng.randrange(len(payload_next))
            n = rng.randint(1, 3)
            first = payload_next[slot]
            payload_next[slot] += n
            events = [event(first + k, text=f"message {first + k} of chat {slot}") for k in range(n)]
            message = payload_message(events, chat_id=f"{prefix}p{slot}")
            bodies.append(body(message, device_id=f"{prefix}pd{slot}"))
            mix.payloads += 1
            mix.events += n
        else:
            bodies.append(body("dummy message", device_id=f"{prefix}w{i}"))
            mix.wakeups += 1
    return bodies


def http_request(payload: bytes) -> bytes:
    head = (
        "POST /push HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: gms-bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


# --- the sender: one keep-alive connection, one request at a time -------------------------------------


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


@dataclass
class Run:
    """One target, one round: latency percentiles in microseconds, rate in requests per second."""

    target: str
    requests: int
    p50_us: float
    p99_us: float
    mean_us: float
    max_us: float
    rate: float
    non_200: int
    replies: dict[str, int] = field(default_factory=dict)
    # CPU time per measured request (where it goes), when the run was probed.
    server_cpu_us: float | None = None
    redis_cpu_us: float | None = None
    client_cpu_us: float | None = None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, math.ceil(round(q * len(sorted_values), 6)))
    return sorted_values[rank - 1]


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


def summarize(
    target: str,
    latencies: list[int],
    elapsed_s: float,
    outcomes: Counter[bytes],
    cpu: tuple[float, float, float] | None = None,
) -> Run:
    ordered = sorted(ns / 1000 for ns in latencies)
    non_200 = sum(n for reply, n in outcomes.items() if reply.startswith(b"HTTP "))
    server_cpu, redis_cpu, client_cpu = (c * 1e6 / len(latencies) for c in cpu) if cpu else (None,) * 3
    return Run(
        target=target,
        requests=len(latencies),
        p50_us=percentile(ordered, 0.50),
        p99_us=percentile(ordered, 0.99),
        mean_us=statistics.fmean(ordered),
        max_us=ordered[-1],
        rate=len(latencies) / elapsed_s,
        non_200=non_200,
        replies={reply.decode(errors="replace"): n for reply, n in outcomes.most_common()},
        server_cpu_us=server_cpu,
        redis_cpu_us=redis_cpu,
        client_cpu_us=client_cpu,
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


# --- orchestration --------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    flush: redis.Redis
    servers: dict[str, Server]
    children: list[multiprocessing.process.BaseProcess] = field(default_factory=list)

    def run_one(
        self, target: str, warmup: list[bytes], measured: list[bytes], pace_per_s: float | None = None
    ) -> Run:
        self.flush.flushall()
        server = self.servers[target]

        def probe() -> tuple[float, float]:
            cpu = self.flush.info("cpu")
            return process_cpu_s(server.process.pid), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

        return summarize(
            target, *send_sequence(server.port, warmup, measured, probe=probe, pace_per_s=pace_per_s)
        )

    def run_senders(
        self, count: int, round_no: int, pace_per_s: float | None = None
    ) -> tuple[list[Run], float]:
        """`count` concurrent sequential senders against our ingress, each with its own chats.

        Also returns the ingress's CPU time per request (warm-up included), to tell queueing in a
        saturated process apart from slowness of each request.
        """
        self.flush.flushall()
        server_pid = self.servers["ours"].process.pid
        cpu_before = process_cpu_s(server_pid)
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(count)
        pipes: list[Pipe] = []
        for k in range(count):
            bodies = generate_bodies(
                self.args.warmup + self.args.requests, seed=1000 * round_no + k, prefix=f"k{k}-"
            )
            requests = [http_request(b) for b in bodies]
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=sender_process,
                args=(
                    self.servers["ours"].port,
                    requests[: self.args.warmup],
                    requests[self.args.warmup :],
                    barrier,
                    sender,
                    pace_per_s,
                ),
                daemon=True,
            )
            process.start()
            sender.close()
            self.children.append(process)
            pipes.append(receiver)
        runs = []
        for k, receiver in enumerate(pipes):
            if not receiver.poll(600):
                raise RuntimeError(f"sender {k} gave no result")
            status, latencies, elapsed_s, outcomes = receiver.recv()
            if status != "ok":
                raise RuntimeError(f"sender {k} failed: {latencies}")
            runs.append(summarize(f"sender {k + 1}", latencies, elapsed_s, outcomes))
        cpu_s = process_cpu_s(server_pid) - cpu_before
        for child in self.children:
            child.join(10)
        self.children.clear()
        return runs, cpu_s * 1e6 / (count * (self.args.warmup + self.args.requests))

    def stop_children(self) -> None:
        for process in self.children:
            if process.is_alive():
                process.terminate()
                process.join(STOP_TIMEOUT_S)
        self.children.clear()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median_run(runs: list[Run]) -> dict[str, float]:
    medians = {
        "p50_us": statistics.median(r.p50_us for r in runs),
        "p99_us": statistics.median(r.p99_us for r in runs),
        "rate": statistics.median(r.rate for r in runs),
    }
    for name in ("server_cpu_us", "redis_cpu_us", "client_cpu_us"):
        values = [v for r in runs if (v := getattr(r, name)) is not None]
        if values:
            medians[name] = statistics.median(values)
    return medians


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run_benchmark(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    mix = Mix()
    bodies = generate_bodies(args.warmup + args.requests, seed=args.seed, prefix="b-", mix=mix)
    requests = [http_request(b) for b in bodies]
    warmup, measured = requests[: args.warmup], requests[args.warmup :]
    measured_bytes = [len(b) for b in bodies[args.warmup :]]
    cpus = os.cpu_count() or 1
    print(
        f"gms-push-relay ingress benchmark: {args.requests} requests x {args.rounds} rounds "
        f"(+{args.warmup} warm-up), 1 sequential keep-alive sender, {cpus} CPUs, "
        f"Python {platform.python_version()}"
    )
    print(
        f"bodies (warm-up + measured): {mix.triggers} triggers ({mix.resends} resends), "
        f"{mix.payloads} payload pushes ({mix.events} events), {mix.wakeups} wake-ups; "
        f"measured mean {statistics.fmean(measured_bytes):.0f} B, max {max(measured_bytes)} B"
    )
    print()

    per_target: dict[str, list[Run]] = {t: [] for t in TARGETS}
    for round_no in range(args.rounds):
        # Interleave the targets, and rotate who goes first, so drift in machine load hits all alike.
        order = TARGETS[round_no % 3 :] + TARGETS[: round_no % 3]
        for target in order:
            run = bench.run_one(target, warmup, measured)
            per_target[target].append(run)
            bad = f"  ({run.non_200} non-200!)" if run.non_200 else ""
            print(
                f"  round {round_no + 1}/{args.rounds}  {LABELS[target]:<20} p50 {run.p50_us:8.1f} us  "
                f"p99 {run.p99_us:8.1f} us  {run.rate:8.0f} req/s{bad}"
            )
    medians = {t: median_run(runs) for t, runs in per_target.items()}

    print()
    print(
        f"median of {args.rounds} rounds; p50 range: lowest-highest round (noise); "
        "CPU: CPU time per request of each process"
    )
    print(
        f"{'target':<20} {'p50 us':>9} {'p99 us':>9} {'req/s':>9} {'p50 range':>13}"
        f" {'server CPU us':>14} {'redis CPU us':>13} {'client CPU us':>14}"
    )
    for target in TARGETS:
        m = medians[target]
        p50s = [r.p50_us for r in per_target[target]]
        spread = f"{min(p50s):.0f}-{max(p50s):.0f}"
        cpu = " ".join(
            f"{m[name]:{width}.1f}" if name in m else f"{'-':>{width}}"
            for name, width in (("server_cpu_us", 14), ("redis_cpu_us", 13), ("client_cpu_us", 14))
        )
        print(
            f"{LABELS[target]:<20} {m['p50_us']:9.1f} {m['p99_us']:9.1f} {m['rate']:9.0f} {spread:>13} {cpu}"
        )
    p50_ratio = medians["ours"]["p50_us"] / medians["floor"]["p50_us"]
    rate_ratio = medians["ours"]["rate"] / medians["naive"]["rate"]
    print()
    p50_ok, rate_ok = p50_ratio <= P50_TARGET, rate_ratio >= RATE_TARGET
    print(f"ours p50 / floor p50   = {p50_ratio:5.2f}  (target <= {P50_TARGET})  {verdict(p50_ok)}")
    print(f"ours rate / naive rate = {rate_ratio:5.2f}  (target >= {RATE_TARGET})  {verdict(rate_ok)}")
    replies = per_target["ours"][-1].replies
    print("ours replied: " + ", ".join(f"{reply} x{n}" for reply, n in replies.items()))
    errors = {t: n for t, runs in per_target.items() if (n := sum(r.non_200 for r in runs))}
    if errors:
        print(f"WARNING: non-200 replies (the numbers above are not comparable): {errors}")

    results: dict[str, Any] = {
        "config": {
            "requests": args.requests,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "seed": args.seed,
            "cpus": cpus,
            "python": platform.python_version(),
            "mix": asdict(mix),
            "mean_body_bytes": statistics.fmean(measured_bytes),
        },
        "rounds": {t: [asdict(r) for r in runs] for t, runs in per_target.items()},
        "median": medians,
        "ratios": {
            "ours_p50_over_floor_p50": {"value": p50_ratio, "target_max": P50_TARGET, "pass": p50_ok},
            "ours_rate_over_naive_rate": {"value": rate_ratio, "target_min": RATE_TARGET, "pass": rate_ok},
        },
    }
    if args.senders > 1:
        results["senders"] = run_concurrent(args, bench, medians["ours"])
        if args.pace:
            # The same comparison at a set load per GMS node, below saturation: does a node's reply
            # time suffer because other nodes send at the same time?
            paced = [bench.run_one("ours", warmup, measured, args.pace) for _ in range(args.rounds)]
            single = median_run(paced)
            print()
            print(
                f"1 sender paced at {args.pace:.0f} req/s against ours: p50 {single['p50_us']:.1f} us, "
                f"p99 {single['p99_us']:.1f} us (median of {args.rounds} rounds)"
            )
            results["senders_paced"] = {
                "pace_per_s": args.pace,
                **run_concurrent(args, bench, single, pace_per_s=args.pace),
            }
    return results


def run_concurrent(
    args: argparse.Namespace, bench: Bench, single: dict[str, float], pace_per_s: float | None = None
) -> dict[str, Any]:
    single_p99_us = single["p99_us"]
    k = args.senders
    pace = f", each paced at {pace_per_s:.0f} req/s" if pace_per_s else ", each as fast as replies come"
    print()
    print(
        f"{k} sequential senders at once (a process and connection each{pace}) against ours, "
        f"{args.rounds} rounds"
    )
    per_sender: list[list[Run]] = [[] for _ in range(k)]
    busy: list[float] = []
    for round_no in range(args.rounds):
        runs, cpu_us = bench.run_senders(k, round_no, pace_per_s)
        for i, run in enumerate(runs):
            per_sender[i].append(run)
        total = sum(r.rate for r in runs)
        worst = max(r.p99_us for r in runs)
        busy.append(cpu_us * total / 1e6)  # fraction of one core the ingress process used
        print(
            f"  round {round_no + 1}/{args.rounds}  total {total:6.0f} req/s  worst p99 {worst:8.1f} us  "
            f"ingress CPU {cpu_us:6.1f} us/req, busy {busy[-1]:4.0%}"
        )
    print()
    print(
        f"{'sender':<10} {'p50 us':>9} {'p99 us':>9} {'req/s':>9}"
        f" {'p99 / single p99':>17} {'p50 / single p50':>17}"
    )
    senders: list[dict[str, Any]] = []
    ratios: list[float] = []
    total_rate = 0.0
    for i, runs in enumerate(per_sender):
        m = median_run(runs)
        ratio = m["p99_us"] / single_p99_us
        p50_ratio = m["p50_us"] / single["p50_us"]
        ratios.append(ratio)
        total_rate += m["rate"]
        senders.append(
            {
                **m,
                "p99_over_single_p99": ratio,
                "p50_over_single_p50": p50_ratio,
                "rounds": [asdict(r) for r in runs],
            }
        )
        print(
            f"{f'sender {i + 1}':<10} {m['p50_us']:9.1f} {m['p99_us']:9.1f} {m['rate']:9.0f} "
            f"{ratio:17.2f} {p50_ratio:17.2f}"
        )
    worst_ratio = max(ratios)
    print(f"{'all':<10} {'':>9} {'':>9} {total_rate:9.0f}")
    print()
    print(
        f"worst sender p99 / single-sender p99 ({single_p99_us:.1f} us) = {worst_ratio:5.2f}  "
        f"(target < {SENDERS_P99_TARGET})  {verdict(worst_ratio < SENDERS_P99_TARGET)}"
    )
    if statistics.median(busy) > 0.8:
        print(
            f"note: the ingress process was {statistics.median(busy):.0%} busy: with one uvicorn process, "
            f"requests from the {k} senders queue behind each other, so latency grows with the sender count"
        )
    cpus = os.cpu_count() or 1
    if cpus < k + 2:
        print(
            f"note: {cpus} CPUs for {k} senders + the ingress + redis-server: the senders compete with the "
            "server for CPU, which inflates these latencies beyond what the ingress alone would cause"
        )
    non_200 = sum(r.non_200 for runs in per_sender for r in runs)
    if non_200:
        print(f"WARNING: {non_200} non-200 replies")
    return {
        "count": k,
        "single_sender_p99_us": single_p99_us,
        "single_sender_p50_us": single["p50_us"],
        "senders": senders,
        "total_rate": total_rate,
        "ingress_busy_fraction": statistics.median(busy),
        "worst_p99_over_single_p99": {
            "value": worst_ratio,
            "target_max_exclusive": SENDERS_P99_TARGET,
            "pass": worst_ratio < SENDERS_P99_TARGET,
        },
    }


@contextmanager
def stack(args: argparse.Namespace) -> Iterator[Bench]:
    """One fresh redis-server and the three servers; everything is stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="gms-bench-") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis", appendonly=False)
        servers: dict[str, Server] = {}
        bench: Bench | None = None
        try:
            redis_server.start()
            for target in TARGETS:
                servers[target] = Server(target, redis_server.url, Path(tmp))
            for server in servers.values():
                server.wait_ready()
            bench = Bench(args, redis.Redis.from_url(redis_server.url), servers)
            yield bench
        finally:
            if bench is not None:
                bench.stop_children()
                bench.flush.close()
            for server in servers.values():
                server.stop()
            redis_server.stop()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM and SIGHUP take the same clean-up path as Ctrl-C


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--requests", type=int, default=5000, help="measured requests per target per round")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up requests before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--senders", type=int, default=1, help="also run K concurrent senders against ours")
    parser.add_argument(
        "--pace",
        type=float,
        default=None,
        metavar="REQ_PER_S",
        help="with --senders: also compare K senders and 1 sender each sending at this rate",
    )
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the body generator")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write results here")
    # Internal: how the script starts the baseline servers in child processes.
    parser.add_argument("--serve", choices=("floor", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < 100 or args.rounds < 1 or args.warmup < 0 or args.senders < 1:
        parser.error("need --requests >= 100, --rounds >= 1, --warmup >= 0, --senders >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve_baseline(args.serve, args.port, args.redis_url)
        return 0
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        with stack(args) as bench:
            results = run_benchmark(args, bench)
    except KeyboardInterrupt:
        print("\ninterrupted; servers and redis-server stopped", file=sys.stderr)
        return 130
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0  # a benchmark: the verdicts above are information, not a failure


if __name__ == "__main__":
    sys.exit(main())
