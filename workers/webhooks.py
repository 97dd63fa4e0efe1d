"""Webhook sink: send each chat's deliveries in order, many chats and sinks in parallel.

A delivery's body and id are fixed when it is created (in Lua), so retries, an operator's requeue and
rq-dashboard's requeue all send the same bytes under the same `webhook-id`. Each sink has its own
bounded thread pool per worker process, so a slow or dead endpoint only ever occupies its own slots.
Retries follow WEBHOOK_RETRY_SCHEDULE_S with +-20% jitter; after the last one the delivery becomes a
failed RQ job (the dead-letter registry), and the chat's later deliveries wait behind it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from shared import keys
from shared.signing import decode_secret, sign

if TYPE_CHECKING:
    from workers.context import WorkerContext

log = logging.getLogger("gms_relay.webhooks")

# Deliveries in flight per sink per worker process.
WEBHOOK_CONCURRENCY = 8
DEAD_LETTER_TTL_S = 7 * 24 * 3600


class DeliveryFailed(Exception):
    """The endpoint did not accept a requeued delivery; RQ puts it back in the failed registry."""


@dataclass(frozen=True)
class Delivery:
    id: str
    sink: int
    session_id: str
    body: bytes
    attempts: int


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class WebhookDispatcher:
    """Takes due deliveries for the sinks that have room in this process and sends them."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        sinks = len(ctx.settings.webhook_urls)
        self.pools = [
            ThreadPoolExecutor(max_workers=WEBHOOK_CONCURRENCY, thread_name_prefix=f"webhook-{s}")
            for s in range(sinks)
        ]
        self.busy = [0] * sinks
        self.lock = threading.Lock()
        secret = ctx.settings.webhook_secret
        self.key = decode_secret(secret) if secret else None
        # A taken delivery is ours until its request surely ended: timeout plus a margin.
        self.lease_ms = ctx.settings.webhook_timeout_ms + 5000

    def pump(self) -> int:
        """Start every due delivery there is room for; returns how many were started."""
        if not self.pools:
            return 0
        with self.lock:
            room = [WEBHOOK_CONCURRENCY - busy for busy in self.busy]
        if not any(room):
            return 0
        token = self.ctx.job_id("lease")
        rows = self.ctx.scripts["take_deliveries"](
            args=[str(now_ms()), str(self.lease_ms), token, *map(str, room)]
        )
        for row in rows:
            delivery = Delivery(row[0].decode(), int(row[1]), row[2].decode(), row[3], int(row[4] or 0))
            with self.lock:
                self.busy[delivery.sink] += 1
            self.pools[delivery.sink].submit(self._run, delivery, token)
        return len(rows)

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

    def _failed(self, delivery: Delivery, token: str, reason: str) -> None:
        schedule = self.ctx.settings.webhook_retry_schedule_s
        attempt = delivery.attempts + 1
        extra = {
            "delivery_id": delivery.id,
            "session_id": delivery.session_id,
            "sink": delivery.sink,
            "attempt": attempt,
            "reason": reason,
        }
        if attempt > len(schedule):
            dead_letter(self.ctx, delivery, reason)
            self.ctx.scripts["delivery_failed"](args=[delivery.id, token, ""])
            log.error("webhook delivery dead-lettered", extra=extra)
            return
        delay_ms = int(schedule[attempt - 1] * 1000 * random.uniform(0.8, 1.2))
        self.ctx.scripts["delivery_failed"](args=[delivery.id, token, str(now_ms() + delay_ms)])
        log.warning("webhook delivery failed; will retry", extra=extra)


def send(ctx: WorkerContext, key: bytes | None, delivery: Delivery) -> str | None:
    """POST one delivery; None on 2xx, else why it failed."""
    urls = ctx.settings.webhook_urls
    if delivery.sink >= len(urls):
        return f"sink {delivery.sink} is no longer configured"
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": delivery.id,
        "webhook-timestamp": str(timestamp),
        "user-agent": "gms-push-relay",
    }
    if key is not None:
        headers["webhook-signature"] = sign(key, delivery.id, timestamp, delivery.body)
    started = time.perf_counter()
    labels = f'sink="{delivery.sink}"'
    try:
        reply = ctx.webhook_http.post(urls[delivery.sink], content=delivery.body, headers=headers)
    except httpx.HTTPError as exc:
        ctx.histograms.observe("webhook", time.perf_counter() - started, labels + ',outcome="error"')
        return f"{type(exc).__name__} from sink {delivery.sink}"
    ok = 200 <= reply.status_code < 300
    outcome = "ok" if ok else "rejected"
    ctx.histograms.observe("webhook", time.perf_counter() - started, labels + f',outcome="{outcome}"')
    return None if ok else f"HTTP {reply.status_code} from sink {delivery.sink}"


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
    key = decode_secret(ctx.settings.webhook_secret) if ctx.settings.webhook_secret else None
    failure = send(ctx, key, Delivery(delivery_id, sink, session_id, body, 0))
    if failure is not None:
        raise DeliveryFailed(failure)
    if finish(ctx, delivery_id):
        ctx.webhooks.pump()
    return "delivered"
