"""Webhook sink: POST one fixed delivery with Standard Webhooks headers; on 2xx start the next.

A delivery's body and id are fixed when it is created (in Lua), so a retry, an RQ requeue and a
dashboard requeue all send the same bytes under the same `webhook-id`.
"""

from __future__ import annotations

import logging
import time

import httpx

from shared import keys
from shared.signing import decode_secret, sign
from workers.commit import WEBHOOK_KEYS_TTL_MS, now_ms
from workers.context import WorkerContext

log = logging.getLogger("gms_relay.webhooks")


class DeliveryFailed(Exception):
    """The endpoint did not accept the delivery; RQ retries with backoff, then dead-letters it."""


def deliver(ctx: WorkerContext, sink: int, session_id: str, delivery_id: str) -> str:
    inflight = ctx.redis.get(keys.inflight(sink, session_id))
    body = ctx.redis.get(keys.delivery(delivery_id))
    if inflight != delivery_id.encode() or not isinstance(body, bytes):
        return "stale"  # already delivered (or skipped by an operator)
    urls = ctx.settings.webhook_urls
    if sink >= len(urls):
        raise DeliveryFailed(f"sink {sink} is no longer configured (WEBHOOK_URL has {len(urls)} entries)")
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
        "user-agent": "gms-push-relay",
    }
    if ctx.settings.webhook_secret:
        headers["webhook-signature"] = sign(
            decode_secret(ctx.settings.webhook_secret), delivery_id, timestamp, body
        )
    started = time.perf_counter()
    try:
        reply = ctx.webhook_http.post(urls[sink], content=body, headers=headers)
    except httpx.HTTPError as exc:
        ctx.histograms.observe("webhook", time.perf_counter() - started, f'sink="{sink}",outcome="error"')
        raise DeliveryFailed(f"sink {sink}: {type(exc).__name__}") from None
    ok = 200 <= reply.status_code < 300
    outcome = "ok" if ok else "rejected"
    ctx.histograms.observe("webhook", time.perf_counter() - started, f'sink="{sink}",outcome="{outcome}"')
    if not ok:
        raise DeliveryFailed(f"sink {sink}: HTTP {reply.status_code}")
    finish(ctx, sink, session_id, delivery_id)
    return "delivered"


def finish(ctx: WorkerContext, sink: int, session_id: str, delivery_id: str) -> bool:
    """Drop a delivered (or skipped) delivery and start the chat's next one, atomically."""
    return bool(
        ctx.scripts["webhook_done"](
            args=[
                str(sink),
                session_id,
                delivery_id,
                ctx.job_id("wh"),
                str(now_ms()),
                str(ctx.settings.webhook_batch_max),
                str(WEBHOOK_KEYS_TTL_MS),
            ]
        )
    )
