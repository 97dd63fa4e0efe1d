"""The drain job: claim due chats in batches, process them concurrently, until none is due.

One RQ job serves many notifications: RQ's per-job cost (~60 Redis commands) is paid per drain,
not per push. The ingress enqueues a drain only when none is waiting, and each drain clears that
marker as it starts, so under load every worker process runs one drain after another. Work that
falls due later (retries, gap waits, expired leases) is picked up by the watcher (workers/watcher.py).
"""

from __future__ import annotations

import logging
import os
import time

from shared import keys
from workers.chat import process
from workers.claims import Claim
from workers.commit import now_ms
from workers.context import CLAIM_BATCH, WorkerContext
from workers.watcher import kick_drain

log = logging.getLogger("gms_relay.worker")

# A drain hands its worker back to RQ after this long (then kicks a successor if work remains).
DRAIN_BUDGET_S = 2.0
# With nothing due, a drain keeps looking this long before it ends, polling every LINGER_POLL_S.
DRAIN_LINGER_S = 0.15
LINGER_POLL_S = 0.005


def drain(ctx: WorkerContext) -> int:
    """Process every due chat; returns how many claims were handled."""
    ctx.redis.delete(keys.DRAIN_QUEUED)  # from now on, a new push enqueues a new drain
    token = os.urandom(16).hex()
    handled = 0
    deadline = time.monotonic() + DRAIN_BUDGET_S
    idle_since: float | None = None
    while True:
        claims = _claim(ctx, token)
        ctx.webhooks.pump()
        if not claims:
            # Linger briefly: the next push is usually milliseconds away, and a new RQ job per burst
            # would cost more than these polls (measured: 980 -> 18 drain jobs at 100 pushes/s).
            now = time.monotonic()
            idle_since = idle_since or now
            if now - idle_since > DRAIN_LINGER_S or now > deadline:
                return handled
            time.sleep(LINGER_POLL_S)
            continue
        idle_since = None
        handled += len(claims)
        for _ in ctx.pool.map(lambda c: process(ctx, c, token), claims):
            pass
        ctx.webhooks.pump()  # deliveries the commits just created
        if time.monotonic() > deadline:
            kick_drain(ctx)
            return handled


def _claim(ctx: WorkerContext, token: str) -> list[Claim]:
    claims = ctx.scripts["claim"](args=[str(now_ms()), token, str(CLAIM_BATCH), ctx.job_id("wk")])
    return [Claim.parse(row) for row in claims]
