"""The drain job: claim due chats in batches, process them concurrently, until none is due.

One RQ job serves many notifications: RQ's per-job cost (~60 Redis commands) is paid per drain,
not per push. The ingress enqueues a drain only when none is waiting, and each drain clears that
marker as it starts, so under load every worker process runs one drain after another. Work that
falls due later (retries, gap waits, expired leases) is picked up by the watcher (workers/watcher.py).

A drain that loses the Redis primary (down, or mid-failover: MasterNotFoundError once the client's
retries are spent) ends quietly rather than as a failed RQ job: a failed drain carries nothing to
requeue (it has no arguments), and its chats are safe where they are, the unclaimed still due, the
claimed due again when their lease ends (claim.lua leaves them in the dirty set), so the watcher kicks
a new drain once Redis answers. It ends once the primary answers again, though: RQ records the job's
end there, and a success it cannot record it records as a failure. RQ's failed registry (and its
alert) is left to drains that raised anything else, or outlived an outage: something to look at.
"""

from __future__ import annotations

import logging
import os
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.clock import now_ms
from workers.chat import process
from workers.claims import Claim
from workers.context import WorkerContext
from workers.watcher import kick_drain

log = logging.getLogger("gms_relay.worker")


def drain(ctx: WorkerContext) -> int:
    """Process every due chat; returns how many claims were handled (0 if the primary was lost)."""
    started = time.monotonic()
    try:
        return _drain(ctx)
    except (RedisConnectionError, RedisTimeoutError) as exc:  # MasterNotFoundError is one
        log.warning(
            "drain lost the Redis primary: it ends once the primary answers; its chats stay due",
            extra={"error": type(exc).__name__},
        )
    # Well before RQ's timeout kills the job (a failure too), whatever a ping costs.
    _wait_for_primary(ctx, until=started + ctx.settings.drain_job_timeout_s / 2)
    return 0


def _wait_for_primary(ctx: WorkerContext, until: float) -> None:
    delay = 0.05
    while time.monotonic() < until:
        try:
            ctx.redis.ping()
            return
        except (RedisError, OSError):
            time.sleep(min(delay, max(until - time.monotonic(), 0.0)))
            delay = min(delay * 2, 0.5)


def _drain(ctx: WorkerContext) -> int:
    ctx.redis.delete(keys.DRAIN_QUEUED)  # from now on, a new push enqueues a new drain
    settings = ctx.settings
    token = os.urandom(16).hex()
    handled = 0
    deadline = time.monotonic() + settings.drain_budget_ms / 1000
    linger_s, poll_s = settings.drain_linger_ms / 1000, settings.drain_poll_ms / 1000
    idle_since: float | None = None
    while True:
        claims = _claim(ctx, token)
        ctx.webhooks.pump()
        if not claims:
            # Linger briefly: the next push is usually milliseconds away, and a new RQ job per burst
            # would cost more than these polls (measured: 980 -> 18 drain jobs at 100 pushes/s).
            now = time.monotonic()
            idle_since = idle_since or now
            if now - idle_since > linger_s or now > deadline:
                return handled
            time.sleep(poll_s)
            continue
        idle_since = None
        handled += len(claims)
        for _ in ctx.pool.map(lambda c: process(ctx, c, token), claims):
            pass
        ctx.webhooks.pump()  # deliveries the commits just created
        if time.monotonic() > deadline:
            kick_drain(ctx.scripts, ctx.ids)
            return handled


def _claim(ctx: WorkerContext, token: str) -> list[Claim]:
    rows = ctx.scripts["claim"](
        now_ms=now_ms(), token=token, max=ctx.settings.claim_batch, job_base=ctx.ids.new("wk")
    )
    return [Claim.parse(row) for row in rows]
