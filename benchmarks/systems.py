"""The processes a run starts besides the simulated GMS: the system under test (ours or naive), the
webhook sink (ours, --webhook) and the py-spy profilers."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis

from benchmarks.measure import COUNTERS
from benchmarks.workload import Workload
from gms_relay.stack import Stack, wait_until_ready
from shared.redis_server import free_port
from tests.processes import relay_env, relay_processes

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
SYSTEMS = ("ours", "naive")
NAIVE_QUEUE = "naive"
_SPAWN = multiprocessing.get_context("spawn")


# --- the systems under test --------------------------------------------------------------------------


class System:
    """A system under test: started by `run()` in a `with`, stopped at its end."""

    name = ""

    def __init__(
        self, redis_url: str, gms_url: str, workers: int, webhook_url: str | None, marker_ttl_s: int = 0
    ) -> None:
        self.redis_url = redis_url
        self.gms_url = gms_url
        self.workers = workers
        self.webhook_url = webhook_url
        self.marker_ttl_s = marker_ttl_s
        self.port = 0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        """Processes worth watching: name -> pid."""
        raise NotImplementedError

    def finished(self, client: redis.Redis, expected_events: int) -> bool:
        """No work left inside the system."""
        raise NotImplementedError


class Ours(System):
    name = "ours"

    def start(self) -> None:
        env = {"REDIS_URL": self.redis_url, "GMS_URL": self.gms_url}
        if self.webhook_url:
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
            env |= {"WEBHOOK_URL": self.webhook_url, "WEBHOOK_SECRET": secret}
        if self.marker_ttl_s:
            ttl = str(self.marker_ttl_s)
            env |= {"CHAT_STATE_TTL_S": ttl, "SESSION_IDLE_TTL_S": ttl}  # ended markers are chat state
        self._context = relay_processes(relay_env(**env), workers=self.workers)
        self.processes = self._context.__enter__()
        self.port = self.processes.port

    def stop(self) -> None:
        self._context.__exit__(None, None, None)

    def pids(self) -> dict[str, int]:
        found = {f"worker-{i}": w.process.pid for i, w in enumerate(self.processes.workers)}
        if self.processes.ingress is not None:
            found["ingress"] = self.processes.ingress.process.pid
        return found

    def finished(self, client: redis.Redis, expected_events: int) -> bool:
        pipe = client.pipeline(transaction=False)
        pipe.hget(COUNTERS, "events_delivered")
        pipe.zcard("gms-relay:dirty")
        pipe.zcard("gms-relay:deliveries")
        delivered, dirty, deliveries = pipe.execute()
        return int(delivered or 0) >= expected_events and dirty == 0 and deliveries == 0


class Naive(System):
    name = "naive"

    def start(self) -> None:
        self.stack = Stack()
        self.port = free_port()
        env = {**os.environ, "REDIS_URL": self.redis_url, "GMS_URL": self.gms_url}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        rq = str(Path(sys.executable).with_name("rq"))
        try:
            for number in range(self.workers):
                argv = [
                    rq,
                    "worker",
                    "-w",
                    "rq.worker.Worker",
                    "-c",
                    "benchmarks.naive",
                    "-u",
                    self.redis_url,
                ]
                argv += ["-q", "-P", str(_ROOT), "-n", f"naive-{number}-{os.getpid()}", NAIVE_QUEUE]
                self.stack.start(f"naive-worker-{number}", argv, env)
            argv = [sys.executable, str(_HERE / "naive.py"), "serve", "--port", str(self.port)]
            self.app = self.stack.start("naive-app", [*argv, "--redis-url", self.redis_url], env)
            wait_until_ready(f"http://127.0.0.1:{self.port}/livez", alive=self.app.alive)
        except BaseException:
            self.stack.stop()
            raise

    def stop(self) -> None:
        self.stack.stop()

    def pids(self) -> dict[str, int]:
        found = {"ingress": self.app.process.pid}
        workers = [c for c in self.stack.children if c.name.startswith("naive-worker")]
        found |= {f"worker-{i}": c.process.pid for i, c in enumerate(workers)}
        return found

    def finished(self, client: redis.Redis, expected_events: int) -> bool:
        pipe = client.pipeline(transaction=False)
        pipe.llen(f"rq:queue:{NAIVE_QUEUE}")
        pipe.zcard(f"rq:wip:{NAIVE_QUEUE}")
        waiting, running = pipe.execute()
        return bool(waiting == 0 and running == 0)


# --- the webhook receiver (ours, --webhook): its own process -----------------------------------------


def receiver_main(port: int, control: Connection, received: Any) -> None:
    """Run simulator.receiver.WebhookReceiver; report the first arrival of each (session, index)."""
    from simulator.receiver import WebhookReceiver

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    first: dict[tuple[str, int], float] = {}
    with WebhookReceiver(port=port) as receiver:
        control.send("ready")
        seen = 0
        while not control.poll(0.1):
            seen = _scan_deliveries(receiver.accepted(), seen, first)
            received.value = len(first)
        control.recv()
        _scan_deliveries(receiver.accepted(), seen, first)
        control.send(first)


def _scan_deliveries(accepted: list[Any], seen: int, first: dict[tuple[str, int], float]) -> int:
    for delivery in accepted[seen:]:
        body = json.loads(delivery.body)
        if body.get("type") != "chat.events":
            continue
        data = body["data"]
        for event in data["events"]:
            first.setdefault((data["sessionId"], event["index"]), delivery.received_at)
    return len(accepted)


@contextmanager
def webhook_receiver(enabled: bool) -> Iterator[tuple[str | None, Callable[[], int], Any]]:
    """Start the receiver process; yields (url, received count, stop() -> first arrivals)."""
    if not enabled:
        yield None, lambda: 0, lambda: {}
        return
    port = free_port()
    parent, child = _SPAWN.Pipe()
    received = _SPAWN.Value("q", 0, lock=False)
    process = _SPAWN.Process(target=receiver_main, args=(port, child, received), daemon=True)
    process.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("webhook receiver did not start")
        parent.recv()

        def stop() -> dict[tuple[str, int], float]:
            parent.send("stop")
            first: dict[tuple[str, int], float] = parent.recv() if parent.poll(60) else {}
            return first

        yield f"http://127.0.0.1:{port}/webhook", lambda: int(received.value), stop
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


# --- profilers ---------------------------------------------------------------------------------------


def start_profilers(
    directory: Path, system: str, workers: int, pids: dict[str, int], workload: Workload, profile_format: str
) -> list[subprocess.Popen[bytes]]:
    """py-spy record of the ingress and the workers over the measurement window."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    directory.mkdir(parents=True, exist_ok=True)
    seconds = max(1, int(workload.duration_s - workload.warmup_s))
    started = []
    for name, pid in pids.items():
        suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[profile_format]
        label = f"{system}-noise" if workload.noise else system
        out = directory / f"{label}-w{workers}-{name}.{suffix}"
        argv = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"]
        argv += ["--nonblocking", "--gil", "--subprocesses", "--format", profile_format, "-o", str(out)]
        started.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return started
