"""A webhook receiver on loopback: records deliveries, can fail, stall or go away on demand.

Tests use it as the downstream app; `gms-relay up --simulate` runs it as the demo receiver
(`python -m simulator.receiver --port P`), printing each delivery it accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    timestamp: str
    signature: str
    body: bytes
    status: int
    received_at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def verify(secret: str, delivery: Delivery) -> bool:
    """Standard Webhooks check: HMAC-SHA256 of "{id}.{timestamp}.{body}" with the decoded secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{delivery.webhook_id}.{delivery.timestamp}.".encode() + delivery.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(part.partition(",")[2], expected) for part in delivery.signature.split())


@dataclass
class WebhookReceiver:
    """Records every request; `fail_rate` answers 500 at random, `delay_s` stalls each reply, `status`
    (when set) answers every request with it (and `retry_after` as its Retry-After header). It also
    notes every webhook-id that was ever being received twice at once (`overlaps`)."""

    port: int = 0
    fail_rate: float = 0.0
    delay_s: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    overlaps: list[str] = field(default_factory=list)
    _receiving: dict[str, int] = field(default_factory=dict)
    seed: int | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        if not self.port:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    def app(self) -> Starlette:
        async def webhook(request: Request) -> Response:
            webhook_id = request.headers.get("webhook-id", "")
            with self._lock:
                self._receiving[webhook_id] = self._receiving.get(webhook_id, 0) + 1
                if self._receiving[webhook_id] > 1:
                    self.overlaps.append(webhook_id)
            try:
                body = await request.body()
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
            finally:
                with self._lock:
                    self._receiving[webhook_id] -= 1
            status = 500 if self._random.random() < self.fail_rate else 200
            status = self.status or status
            headers = {"Retry-After": self.retry_after} if self.retry_after and status != 200 else None
            with self._lock:
                self.deliveries.append(
                    Delivery(
                        webhook_id=request.headers.get("webhook-id", ""),
                        timestamp=request.headers.get("webhook-timestamp", ""),
                        signature=request.headers.get("webhook-signature", ""),
                        body=body,
                        status=status,
                        received_at=time.time(),
                    )
                )
            return Response(status_code=status, headers=headers)

        async def livez(request: Request) -> Response:
            return JSONResponse({"status": "alive"})

        return Starlette(routes=[Route("/webhook", webhook, methods=["POST"]), Route("/livez", livez)])

    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if 200 <= d.status < 300]

    def start(self) -> None:
        """Serve in a background thread (again on the same port after `stop`)."""
        config = uvicorn.Config(
            self.app(), host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"webhook receiver did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._server = self._thread = None

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="demo webhook receiver: prints what it accepts")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    args = parser.parse_args(argv)
    secret = os.environ.get("WEBHOOK_SECRET")
    receiver = WebhookReceiver(port=args.port)
    base_app = receiver.app()

    async def printing_app(scope: Any, receive: Any, send: Any) -> None:
        await base_app(scope, receive, send)
        if scope["type"] == "http" and scope["path"] == "/webhook" and receiver.deliveries:
            delivery = receiver.deliveries.pop()
            payload = delivery.json
            data = payload.get("data", {})
            indexes = [e.get("index") for e in data.get("events", [])]
            signed = "signed ok" if secret and verify(secret, delivery) else "unsigned"
            print(
                f"webhook {payload.get('type')} session={data.get('sessionId')} "
                f"device={data.get('deviceId')} "
                f"events={indexes} {signed}",
                flush=True,
            )

    uvicorn.run(printing_app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
