"""POST /push: authenticate, bound, classify and store one GMS notification, then answer.

This is the hottest path of the product (GMS waits for each reply before its next POST), so it is a
raw ASGI app: one pass over the headers, the body read in bounded chunks, one Redis call.
"""

from __future__ import annotations

import time
from typing import Any

from ingress.auth import FailureThrottle, push_token_ok
from ingress.metrics import IngressMetrics
from ingress.replies import error_body, reply
from ingress.store import IngressStore
from shared.classify import classify
from shared.errors import PayloadTooLarge, RelayError, Unauthorized
from shared.models import Payload, Trigger

_OUTCOME_BODIES = {
    name: f'{{"status":"{name}"}}'.encode()
    for name in ("queued", "duplicate", "covered", "ended", "wakeup", "late")
}
_ALLOW = [(b"allow", b"POST")]


def _kind(note: object) -> str:
    return "trigger" if isinstance(note, Trigger) else "payload" if isinstance(note, Payload) else "wakeup"


class PushEndpoint:
    def __init__(self, store: IngressStore, metrics: IngressMetrics, throttle: FailureThrottle) -> None:
        self.store = store
        self.metrics = metrics
        self.throttle = throttle
        self.token = store.settings.push_token
        self.max_bytes = store.settings.push_max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        if scope["method"] != "POST":
            await reply(send, 405, error_body("method_not_allowed", "use POST"), _ALLOW)
            return
        kind = "unknown"
        try:
            length, authorization = -1, None
            for name, value in scope["headers"]:
                if name == b"content-length":
                    length = int(value) if value.isdigit() else -1
                elif name == b"authorization":
                    authorization = value.decode("latin-1")
            if self.token is not None:
                client = scope.get("client")
                address = client[0] if client else ""
                if self.throttle.blocked(address):
                    await reply(send, 429, error_body("too_many_failures", "too many failed authentications"))
                    self.metrics.push(kind, "throttled", time.perf_counter() - started)
                    return
                if not push_token_ok(self.token, scope["query_string"], authorization):
                    self.throttle.failed(address)
                    raise Unauthorized("missing or wrong push token")
            if length > self.max_bytes:
                raise PayloadTooLarge(f"body exceeds {self.max_bytes} bytes")
            body = await self._read_body(receive)
            note = classify(body)
            kind = _kind(note)
            outcome = await self.store.ingest(note)
        except RelayError as exc:
            await reply(send, exc.status, error_body(exc.code, exc.detail))
            self.metrics.push(kind, exc.code, time.perf_counter() - started)
            return
        await reply(send, 200, _OUTCOME_BODIES.get(outcome, b'{"status":"ok"}'))
        self.metrics.push(kind, outcome, time.perf_counter() - started)

    async def _read_body(self, receive: Any) -> bytes:
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > self.max_bytes:
                raise PayloadTooLarge(f"body exceeds {self.max_bytes} bytes")
            return body
        chunks, size = [body], len(body)
        while message.get("more_body", False):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise PayloadTooLarge(f"body exceeds {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
