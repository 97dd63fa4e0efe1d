"""The drain job: claim due chats in batches, process them concurrently, until nothing is due.

One RQ job serves many notifications: RQ's per-job cost (~60 Redis commands) is paid per drain,
not per push. The ingress enqueues a drain only when none is waiting, and each drain clears that
marker as it starts, so under load every worker process runs one drain at a time.
"""

from __future__ import annotations

import logging
import os
import time

from shared import keys
from workers.chat import process
from workers.claims import Claim
from workers.commit import STREAM_TTL_MS, WEBHOOK_KEYS_TTL_MS, now_ms
from workers.context import CLAIM_BATCH, WorkerContext

log = logging.getLogger("gms_relay.worker")

# A drain hands the worker back to RQ after this long, so webhook jobs interleave with it.
DRAIN_BUDGET_S = 2.0
# Waiting for a chat to become due (retry backoff, payload gap, another worker's lease): poll step.
POLL_STEP_MS = 20
# Only one drain at a time waits for future work; the others return their worker to RQ.
POLLER = f"{keys.PREFIX}:poller"
DRAIN_MARKER_TTL_MS = 1000


def drain(ctx: WorkerContext) -> int:
    """Process every due chat; returns how many claims were handled."""
    ctx.redis.delete(keys.DRAIN_QUEUED)  # from now on, a new push enqueues a new drain
    token = os.urandom(12).hex()
    handled = 0
    deadline = time.monotonic() + DRAIN_BUDGET_S
    try:
        while time.monotonic() < deadline:
            claims, wait_ms = _claim(ctx, token)
            if claims:
                handled += len(claims)
                for _ in ctx.pool.map(lambda c: process(ctx, c, token), claims):
                    pass
                continue
            if wait_ms < 0:
                return handled
            if wait_ms > POLL_STEP_MS and not ctx.redis.set(
                POLLER, token, nx=True, px=int(DRAIN_BUDGET_S * 1000)
            ):
                if ctx.redis.get(POLLER) != token.encode():
                    return handled  # another drain is already waiting for that work
            time.sleep(min(wait_ms, POLL_STEP_MS) / 1000)
        # Budget spent with work left: make sure a drain follows us.
        ctx.scripts["kick"](args=[ctx.job_id("drain"), str(now_ms()), str(DRAIN_MARKER_TTL_MS)])
        return handled
    finally:
        if ctx.redis.get(POLLER) == token.encode():
            ctx.redis.delete(POLLER)
        ctx.histograms.flush(ctx.redis)


def _claim(ctx: WorkerContext, token: str) -> tuple[list[Claim], int]:
    settings = ctx.settings
    claims, wait_ms = ctx.scripts["claim"](
        args=[
            str(now_ms()),
            str(settings.lease_ttl_ms),
            token,
            str(CLAIM_BATCH),
            str(settings.stream_maxlen),
            str(STREAM_TTL_MS),
            str(len(settings.webhook_urls)),
            ctx.job_id("wk"),
            str(settings.webhook_batch_max),
            str(WEBHOOK_KEYS_TTL_MS),
        ]
    )
    return [Claim.parse(row) for row in claims], int(wait_ms)
