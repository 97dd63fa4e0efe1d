"""Webhook sink: send each chat's deliveries in order, many chats and sinks in parallel.

A delivery's body and id are fixed when it is created (in Lua), so retries, an operator's requeue and
rq-dashboard's requeue all send the same bytes under the same `webhook-id`. Each sink has its own
bounded thread pool per worker process, so a slow or dead endpoint only ever occupies its own slots.
Retries follow WEBHOOK_RETRY_SCHEDULE_S with +-20% jitter (longer if the endpoint asks with
`Retry-After` on 429/503); after the last one the delivery becomes a failed RQ job (the dead-letter
registry), and the chat's later deliveries wait behind it. A sink failing several deliveries in a row
is down: its deliveries wait and one probe a second tests it (take_deliveries.lua); 410 Gone disables
it. Each request has a deadline for the whole exchange (WEBHOOK_TIMEOUT_MS), shorter than its lease, so
no delivery is ever in flight twice.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from shared import keys
from shared.form_client import FormClient
from shared.signing import decode_secret, sign

if TYPE_CHECKING:
    from workers.context import WorkerContext

log = logging.getLogger("gms_relay.webhooks")

# Deliveries in flight per sink per worker process.
WEBHOOK_CONCURRENCY = 8
DEAD_LETTER_TTL_S = 7 * 24 * 3600
# A receiver's reply body is not used; anything bigger than this is not a webhook acknowledgement.
MAX_REPLY_BYTES = 64 * 1024
# The longest `Retry-After` honoured (seconds); the schedule's own delay applies if it is longer.
MAX_RETRY_AFTER_S = 3600.0


class DeliveryFailed(Exception):
    """The endpoint did not accept a requeued delivery; RQ puts it back in the failed registry."""


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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sink_client(url: str, timeout_ms: int) -> tuple[FormClient, str]:
    """A keep-alive client for one sink's origin with a deadline for each whole request (connect, TLS,
    send, reply), and the path (with query) to post to. No proxy is used, as for Refresh."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    origin = f"{parts.scheme}://{parts.netloc}"
    return FormClient(origin, timeout_ms / 1000, max_reply_bytes=MAX_REPLY_BYTES), path


class WebhookDispatcher:
    """Takes due deliveries for the sinks that have room in this process and sends them."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        sinks = len(ctx.settings.webhook_urls)
        self.clients = [
            sink_client(url, ctx.settings.webhook_timeout_ms) for url in ctx.settings.webhook_urls
        ]
        self.pools = [
            ThreadPoolExecutor(max_workers=WEBHOOK_CONCURRENCY, thread_name_prefix=f"webhook-{s}")
            for s in range(sinks)
        ]
        self.busy = [0] * sinks
        self.lock = threading.Lock()
        secret = ctx.settings.webhook_secret
        self.key = decode_secret(secret) if secret else None
        # A taken delivery is ours until its request surely ended: its whole-request deadline plus a
        # margin for signing, the Redis calls around it and a stalled thread.
        self.lease_ms = ctx.settings.webhook_timeout_ms + 5000

    def pump(self) -> int:
        """Start every due delivery there is room for; returns how many were started.

        Called from the drain thread and the watcher at once: the room is reserved under the lock before
        the claim, so together they never take more than the pools can run."""
        if not self.pools:
            return 0
        with self.lock:
            room = [WEBHOOK_CONCURRENCY - busy for busy in self.busy]
            for sink, free in enumerate(room):
                self.busy[sink] += free
        taken = [0] * len(room)
        try:
            if any(room):
                token = self.ctx.job_id("lease")
                rows = self.ctx.scripts["take_deliveries"](
                    args=[str(now_ms()), str(self.lease_ms), token, *map(str, room)]
                )
                for row in rows:
                    delivery = Delivery(
                        row[0].decode(), int(row[1]), row[2].decode(), row[3], int(row[4] or 0)
                    )
                    taken[delivery.sink] += 1
                    self.pools[delivery.sink].submit(self._run, delivery, token)
        finally:
            with self.lock:
                for sink, free in enumerate(room):
                    self.busy[sink] -= free - taken[sink]  # give back what was reserved but not taken
        return sum(taken)

    def _run(self, delivery: Delivery, token: str) -> None:
        try:
            failure = send(self.ctx, self.key, delivery)
            if failure is None:
                started_next = finish(self.ctx, delivery.id)
            else:
                self._failed(delivery, token, failure)
                started_next = False
        except Exception:
            log.exception("webhook delivery crashed", extra={"delivery_id": delivery.id})
            started_next = False
        finally:
            with self.lock:
                self.busy[delivery.sink] -= 1
        if started_next:
            self.pump()

    def _failed(self, delivery: Delivery, token: str, failure: Failure) -> None:
        schedule = self.ctx.settings.webhook_retry_schedule_s
        attempt = delivery.attempts + 1
        extra = {
            "delivery_id": delivery.id,
            "session_id": delivery.session_id,
            "sink": delivery.sink,
            "attempt": attempt,
            "reason": failure.reason,
        }
        retry_at = ""
        if attempt <= len(schedule):
            delay_s = schedule[attempt - 1] * random.uniform(0.8, 1.2)
            if failure.retry_after_s is not None:
                delay_s = max(delay_s, min(failure.retry_after_s, MAX_RETRY_AFTER_S))
            retry_at = str(now_ms() + int(delay_s * 1000))
        gone = "1" if failure.gone else ""
        # Fenced first: a worker that lost its lease must not leave a dead letter behind.
        outcome = self.ctx.scripts["delivery_failed"](
            args=[delivery.id, token, str(now_ms()), retry_at, gone]
        )
        outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        if outcome in ("dead", "gone"):
            dead_letter(self.ctx, delivery, failure.reason)
            if outcome == "gone":
                log.error(
                    "webhook endpoint answered 410 Gone: sink disabled, delivery dead-lettered", extra=extra
                )
            else:
                log.error("webhook delivery dead-lettered", extra=extra)
        elif outcome == "parked":
            log.warning("webhook sink is down; the delivery waits for its probe", extra=extra)
        elif outcome == "retry":
            log.warning("webhook delivery failed; will retry", extra=extra)


def send(ctx: WorkerContext, key: bytes | None, delivery: Delivery) -> Failure | None:
    """POST one delivery within its deadline; None on 2xx, else why it failed."""
    clients = ctx.webhooks.clients
    if delivery.sink >= len(clients):
        return Failure(f"sink {delivery.sink} is no longer configured")
    client, path = clients[delivery.sink]
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": delivery.id,
        "webhook-timestamp": str(timestamp),
    }
    if key is not None:
        headers["webhook-signature"] = sign(key, delivery.id, timestamp, delivery.body)
    started = time.perf_counter()
    labels = f'sink="{delivery.sink}"'
    try:
        reply = client.post(path, delivery.body, headers)
    except (OSError, http.client.HTTPException) as exc:  # TimeoutError included: the deadline passed
        ctx.histograms.observe("webhook", time.perf_counter() - started, labels + ',outcome="error"')
        return Failure(f"{type(exc).__name__} from sink {delivery.sink}")
    ok = 200 <= reply.status < 300
    outcome = "ok" if ok else "rejected"
    ctx.histograms.observe("webhook", time.perf_counter() - started, labels + f',outcome="{outcome}"')
    if ok:
        return None
    reason = f"HTTP {reply.status} from sink {delivery.sink}"
    if reply.status in (429, 503):
        return Failure(reason, retry_after_s=retry_after(reply.headers.get("Retry-After")))
    return Failure(reason, gone=reply.status == 410)


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


def finish(ctx: WorkerContext, delivery_id: str) -> bool:
    """Drop a delivered (or skipped) delivery and start its chat's next one; True if one started."""
    return bool(ctx.scripts["delivery_done"](args=[delivery_id, ctx.job_id("wh"), str(now_ms())]))


def _queue(ctx: WorkerContext) -> Queue:
    return Queue(keys.WEBHOOK_QUEUE, connection=ctx.redis, serializer=JSONSerializer)


def dead_letter(ctx: WorkerContext, delivery: Delivery, reason: str) -> None:
    """Record the delivery as a failed RQ job (same id): requeueing it sends it again."""
    queue = _queue(ctx)
    job = queue.create_job(
        keys.WEBHOOK_JOB,
        args=(delivery.sink, delivery.session_id, delivery.id),
        job_id=delivery.id,
        result_ttl=0,
        failure_ttl=DEAD_LETTER_TTL_S,
        timeout=ctx.settings.webhook_timeout_ms // 1000 + 10,
        description=f"webhook {delivery.id} to sink {delivery.sink} for chat {delivery.session_id}",
        status=JobStatus.FAILED,
    )
    job.origin = keys.WEBHOOK_QUEUE
    pipe = ctx.redis.pipeline()
    pipe.sadd(keys.RQ_QUEUES, keys.rq_queue(keys.WEBHOOK_QUEUE))
    FailedJobRegistry(queue=queue).add(job, ttl=DEAD_LETTER_TTL_S, exc_string=reason, pipeline=pipe)
    Result.create_failure(job, DEAD_LETTER_TTL_S, exc_string=reason, pipeline=pipe)
    pipe.execute()


def deliver_requeued(ctx: WorkerContext, sink: int, session_id: str, delivery_id: str) -> str:
    """An operator requeued a dead-lettered delivery: send it once more, in place."""
    body = ctx.redis.hget(keys.delivery(delivery_id), "body")
    inflight = ctx.redis.get(keys.inflight(sink, session_id))
    if not isinstance(body, bytes) or inflight != delivery_id.encode():
        return "stale"  # delivered or skipped meanwhile
    failure = send(ctx, ctx.webhooks.key, Delivery(delivery_id, sink, session_id, body, 0))
    if failure is not None:
        raise DeliveryFailed(failure.reason)
    if finish(ctx, delivery_id):
        ctx.webhooks.pump()
    return "delivered"
