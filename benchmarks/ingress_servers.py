"""The servers under test for benchmarks/ingress.py, each in a child process on a free loopback port.

floor  a bare Starlette endpoint doing one async LPUSH of the raw body (`ingress.py --serve floor`),
naive  a Starlette endpoint calling RQ `Queue.enqueue` (`ingress.py --serve naive`),
ours   the real ingress, started as `python -m gms_relay ingress`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from shared.redis_server import free_port

_ROOT = Path(__file__).resolve().parent.parent
_ENTRY = _ROOT / "benchmarks" / "ingress.py"  # the benchmark's entry point serves the baselines

TARGETS = ("floor", "naive", "ours")
LABELS = {"floor": "floor (LPUSH)", "naive": "naive (RQ enqueue)", "ours": "ours (ingress)"}
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


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

    def __init__(
        self,
        kind: str,
        redis_url: str,
        log_dir: Path,
        name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """`name` tells apart several servers of one kind (their logs too); `env` is set on top of ours
        (an ingress's INGRESS_ACK or Sentinel variables)."""
        self.kind = kind
        self.name = name or kind
        self.port = free_port()
        env = {**os.environ, "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING", **(env or {})}
        if "PUSH_TOKEN" not in env:  # the baselines check no token either: like for like
            env["ALLOW_OPEN_PUSH"] = "true"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        if kind == "ours":
            args = ["-m", "gms_relay", "ingress", "--host", "127.0.0.1", "--port", str(self.port)]
            args += ["--processes", os.environ.get("BENCH_INGRESS_PROCESSES", "1")]
        else:
            args = [str(_ENTRY), "--serve", kind, "--port", str(self.port)]
            args += ["--redis-url", redis_url]
        self.log_path = log_dir / f"{self.name}.log"
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
                        f"{self.name} server did not start on port {self.port}:\n{log}"
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
