"""One webhook attempt: a signed POST to a sink within its deadline, and what its reply means.

Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`); each sink gets one
keep-alive client with a deadline for the whole exchange (connect, TLS, send, reply) and no proxy.
"""

from __future__ import annotations

import email.utils
import http.client
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.form_client import FormClient
from shared.metrics import Histograms
from shared.settings import Settings
from shared.signing import decode_secret, sign


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, and what the endpoint asked for."""

    reason: str
    retry_after_s: float | None = None  # Retry-After on 429/503
    gone: bool = False  # 410 Gone: the endpoint is disabled (Standard Webhooks)


@dataclass(frozen=True)
class Delivery:
    id: str
    sink: int
    session_id: str
    body: bytes
    attempts: int


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110); None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Sinks:
    """The configured webhook sinks of one worker process."""

    def __init__(self, settings: Settings, histograms: Histograms) -> None:
        self.histograms = histograms
        self.clients: list[tuple[FormClient, str]] = []
        for url in settings.webhook_urls:
            parts = urlsplit(url)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            origin = f"{parts.scheme}://{parts.netloc}"
            client = FormClient(
                origin, settings.webhook_timeout_ms / 1000, max_reply_bytes=settings.webhook_reply_max_bytes
            )
            self.clients.append((client, path))
        secret = settings.webhook_secret
        self.key = decode_secret(secret) if secret else None

    def __len__(self) -> int:
        return len(self.clients)

    def send(self, delivery: Delivery) -> Failure | None:
        """POST one delivery within its deadline; None on 2xx, else why it failed."""
        if delivery.sink >= len(self.clients):
            return Failure(f"sink {delivery.sink} is no longer configured")
        client, path = self.clients[delivery.sink]
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
        }
        if self.key is not None:
            headers["webhook-signature"] = sign(self.key, delivery.id, timestamp, delivery.body)
        started = time.perf_counter()
        labels = f'sink="{delivery.sink}"'
        try:
            reply = client.post(path, delivery.body, headers)
        except (OSError, http.client.HTTPException) as exc:  # TimeoutError included: the deadline passed
            self.histograms.observe("webhook", time.perf_counter() - started, labels + ',outcome="error"')
            return Failure(f"{type(exc).__name__} from sink {delivery.sink}")
        ok = 200 <= reply.status < 300
        outcome = "ok" if ok else "rejected"
        self.histograms.observe("webhook", time.perf_counter() - started, labels + f',outcome="{outcome}"')
        if ok:
            return None
        reason = f"HTTP {reply.status} from sink {delivery.sink}"
        if reply.status in (429, 503):
            return Failure(reason, retry_after_s=retry_after(reply.headers.get("Retry-After")))
        return Failure(reason, gone=reply.status == 410)

    def close(self) -> None:
        for client, _path in self.clients:
            client.close()
