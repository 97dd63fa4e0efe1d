"""Orchestration of benchmarks/ingress.py: a fresh redis-server and the three servers (with --ack-levels
also a primary with a replica and an ingress per level), one run against a target, K concurrent senders
against ours."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path

import redis

from benchmarks.ingress_acks import ack_servers
from benchmarks.ingress_bodies import generate_bodies, http_request
from benchmarks.ingress_client import CpuProbe, send_interleaved, send_sequence, sender_process
from benchmarks.ingress_servers import STOP_TIMEOUT_S, TARGETS, Server
from benchmarks.ingress_stats import Run, summarize
from shared.redis_server import RedisServer


@dataclass
class Bench:
    args: argparse.Namespace
    flush: redis.Redis
    servers: dict[str, Server]
    children: list[multiprocessing.process.BaseProcess] = field(default_factory=list)
    # The Redis of a server not on `flush`'s (--ack-levels): flushed with it, its CPU in that probe.
    redis_for: dict[str, redis.Redis] = field(default_factory=dict)

    def run_one(
        self, target: str, warmup: list[bytes], measured: list[bytes], pace_per_s: float | None = None
    ) -> Run:
        self.flush.flushall()
        server = self.servers[target]
        probe = self._probe(server)
        return summarize(
            target, *send_sequence(server.port, warmup, measured, probe=probe, pace_per_s=pace_per_s)
        )

    def run_interleaved(self, warmup: list[bytes], measured: list[bytes], chunk: int) -> dict[str, Run]:
        """Every target in one pass, alternating every `chunk` requests (`--interleave`)."""
        self.flush.flushall()
        for client in {id(c): c for c in self.redis_for.values()}.values():
            client.flushall()
        probes = {target: self._probe(server) for target, server in self.servers.items()}
        ports = {target: server.port for target, server in self.servers.items()}
        results = send_interleaved(ports, warmup, measured, chunk, probes)
        return {target: summarize(target, *result) for target, result in results.items()}

    def _probe(self, server: Server) -> CpuProbe:
        client = self.redis_for.get(server.name, self.flush)

        def probe() -> tuple[float, float]:
            cpu = client.info("cpu")
            return process_cpu_s(server.process.pid), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

        return probe

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


@contextmanager
def stack(args: argparse.Namespace) -> Iterator[Bench]:
    """One fresh redis-server and the three servers (and the --ack-levels ones); everything is stopped
    on the way out."""
    with tempfile.TemporaryDirectory(prefix="gms-bench-") as tmp, ExitStack() as extras:
        redis_server = RedisServer(Path(tmp) / "redis", appendonly=False)
        servers: dict[str, Server] = {}
        bench: Bench | None = None
        try:
            redis_server.start()
            for target in TARGETS:
                servers[target] = Server(target, redis_server.url, Path(tmp))
            redis_for: dict[str, redis.Redis] = {}
            if args.ack_levels:
                acks = extras.enter_context(ack_servers(args, Path(tmp)))
                servers.update(acks.servers)
                redis_for = dict.fromkeys(acks.servers, acks.primary)
            for server in servers.values():
                server.wait_ready()
            bench = Bench(args, redis.Redis.from_url(redis_server.url), servers, redis_for=redis_for)
            yield bench
        finally:
            if bench is not None:
                bench.stop_children()
                bench.flush.close()
            for server in servers.values():
                server.stop()
            redis_server.stop()
