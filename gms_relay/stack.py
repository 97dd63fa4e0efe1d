"""`gms-relay up`: the whole relay on one machine, as child processes of one supervisor.

Redis (embedded unless REDIS_URL is set), the ingress, N workers, rq-dashboard and, with
`--simulate`, the GMS simulator and a demo webhook receiver. Ctrl-C or SIGTERM stops the children in
order (traffic first, Redis last); a child that dies takes the stack down with a non-zero exit, and
children die with the supervisor (PR_SET_PDEATHSIG), so nothing is left behind.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from shared.redis_server import RedisServer, free_port

STOP_TIMEOUT_S = 15.0


def _die_with_parent() -> None:
    """Linux: deliver SIGTERM to the child when the supervisor dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    def __init__(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        # PR_SET_PDEATHSIG fires when the spawning *thread* exits, so only the main thread asks for it.
        on_main_thread = threading.current_thread() is threading.main_thread()
        self.process = subprocess.Popen(
            argv,
            env=dict(env),
            start_new_session=True,
            preexec_fn=_die_with_parent if on_main_thread else None,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Signal the child's whole process group (RQ's scheduler runs in a grandchild)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> None:
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait()
        self.signal(signal.SIGKILL)  # leftovers of the group, if any


class Stack:
    """Children started in order and stopped in reverse order."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.redis: RedisServer | None = None

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> Child:
        child = Child(name, argv, env)
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            child.terminate()
            child.wait(STOP_TIMEOUT_S)
        self.children.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if not c.alive()), None)


def relay_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gms_relay", *args]


def wait_until_ready(url: str, timeout_s: float = 20.0, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready")


def _dashboard_available() -> bool:
    try:
        import rq_dashboard  # noqa: F401
    except ImportError:
        return False
    return True


def run_stack(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    stack = Stack()
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if not env.get("REDIS_URL"):
            stack.redis = RedisServer(Path(args.data_dir).resolve() / "redis")
            stack.redis.start()
            env["REDIS_URL"] = stack.redis.url
            print(f"gms-relay: embedded Redis at {stack.redis.url} (data in {stack.redis.data_dir})")
        if args.simulate:
            chat_port = free_port()
            receiver_port = free_port()
            env.setdefault("GMS_URL", f"http://127.0.0.1:{chat_port}")
            env.setdefault("API_TOKEN", secrets.token_urlsafe(16))
            env.setdefault("WEBHOOK_URL", f"http://127.0.0.1:{receiver_port}/webhook")
            env.setdefault("WEBHOOK_SECRET", "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
        if not env.get("GMS_URL"):
            print("gms-relay: GMS_URL is required (or use --simulate)", file=sys.stderr)
            return 2
        if args.simulate:
            receiver = stack.start(
                "receiver",
                [sys.executable, "-m", "simulator.receiver", "--port", str(receiver_port)],
                env,
            )
            wait_until_ready(f"http://127.0.0.1:{receiver_port}/livez", alive=receiver.alive)
        for number in range(args.workers):
            stack.start(f"worker-{number + 1}", relay_command("worker"), env)
        ingress = stack.start("ingress", relay_command("ingress", "--port", str(args.port)), env)
        base = f"http://127.0.0.1:{args.port}"
        wait_until_ready(f"{base}/readyz", alive=ingress.alive)
        print(f"gms-relay: ingress at {base}/push, {args.workers} worker(s)")
        if not args.no_dashboard and _dashboard_available():
            stack.start(
                "rq-dashboard",
                [
                    sys.executable,
                    "-m",
                    "gms_relay.dashboard",  # rq-dashboard reading the relay's JSON jobs, workers' too
                    "--redis-url",
                    env["REDIS_URL"],
                    "--port",
                    str(args.dashboard_port),
                    "--bind",
                    "127.0.0.1",
                    # Deleting a dead letter there would strand its chat's later deliveries; skip-failed
                    # releases them.
                    "--disable-delete",
                ],
                env,
            )
            print(f"gms-relay: rq-dashboard at http://127.0.0.1:{args.dashboard_port}")
        if args.simulate:
            stack.start(
                "simulator",
                [
                    sys.executable,
                    "-m",
                    "simulator",
                    "--push-url",
                    f"{base}/push",
                    "--api-url",
                    base,
                    "--chat-port",
                    str(chat_port),
                    "--mode",
                    "mixed",
                    "--forever",
                ],
                env,
            )
            print(
                f"gms-relay: simulator driving demo chats; events in Redis streams gms-relay:events:*, "
                f"webhooks at {env['WEBHOOK_URL']}"
            )
        while not stop.wait(0.2):
            dead = stack.first_dead()
            if dead is not None:
                print(
                    f"gms-relay: {dead.name} exited with {dead.process.returncode}; stopping", file=sys.stderr
                )
                return 1
        return 0
    finally:
        stack.stop()
        print("gms-relay: stopped")
