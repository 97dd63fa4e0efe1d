"""Real relay processes for end-to-end tests: ingress and workers as subprocesses."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from gms_relay.stack import Child, Stack, relay_command, wait_until_ready
from shared.redis_server import free_port


def relay_env(**env: str) -> dict[str, str]:
    """The environment of test relays. Without a PUSH_TOKEN of the test's, the ingress (on loopback,
    fed by the test alone) runs open on purpose: ALLOW_OPEN_PUSH=true."""
    dropped = ("WEBHOOK_", "PUSH_", "API_", "ALLOW_OPEN_PUSH", "CORS_ORIGINS")
    base = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    base.update({"LOG_LEVEL": "WARNING", **env})
    if "PUSH_TOKEN" not in env:
        base.setdefault("ALLOW_OPEN_PUSH", "true")
    return base


@contextmanager
def relay_processes(
    env: Mapping[str, str], workers: int = 2, ingress: bool = True
) -> Iterator[RelayProcesses]:
    processes = RelayProcesses(dict(env))
    try:
        for _ in range(workers):
            processes.add_worker()
        if ingress:
            processes.start_ingress()
        yield processes
    finally:
        processes.stack.stop()


class RelayProcesses:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.stack = Stack()
        self.workers: list[Child] = []
        self.ingress: Child | None = None
        self.port = free_port()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_worker(self) -> Child:
        worker = self.stack.start(f"worker-{len(self.workers)}", relay_command("worker"), self.env)
        self.workers.append(worker)
        return worker

    def restart_ingress(self, signum: int) -> Child:
        """Stop the ingress with `signum` (SIGTERM: graceful, SIGKILL: crash) and start it again."""
        assert self.ingress is not None
        self.ingress.signal(signum)
        self.ingress.wait(30)
        self.stack.children.remove(self.ingress)
        return self.start_ingress()

    def stop_worker(self, worker: Child, signum: int) -> int:
        """Stop one worker with `signum` and return its exit code."""
        worker.signal(signum)
        worker.wait(90)
        self.stack.children.remove(worker)
        self.workers.remove(worker)
        return worker.process.returncode

    def start_ingress(self) -> Child:
        self.ingress = self.stack.start(
            "ingress", relay_command("ingress", "--port", str(self.port)), self.env
        )
        # /readyz, not /livez: it also opens the ingress's Redis connection, whose 50 ms connect timeout
        # a stall on a loaded machine could otherwise turn into a 503 for the test's first push.
        wait_until_ready(f"{self.base_url}/readyz", alive=self.ingress.alive)
        return self.ingress


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0, step_s: float = 0.05) -> None:
    """Poll until `condition()` holds; fail with a clear message after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(step_s)
