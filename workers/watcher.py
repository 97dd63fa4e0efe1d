"""A thread per worker process that notices work falling due with no push to announce it.

Retry backoffs, payload gap waits, webhook retries and the leases of crashed workers all end
silently. Every WATCH_INTERVAL_S the watcher starts due webhook deliveries this process has room for,
enqueues a drain when a chat is due, and flushes this process's metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from shared import keys
from workers.webhooks import now_ms

if TYPE_CHECKING:
    from workers.context import WorkerContext

log = logging.getLogger("gms_relay.worker")

WATCH_INTERVAL_S = 0.1
METRICS_FLUSH_S = 1.0


def kick_drain(ctx: WorkerContext) -> None:
    """Enqueue a drain job unless one is already waiting."""
    ctx.scripts["kick"](args=[ctx.job_id("drain"), str(now_ms())])


def check_once(ctx: WorkerContext) -> bool:
    """One look: start due deliveries; kick a drain if a chat is due. True if a chat was due."""
    ctx.webhooks.pump()
    due = ctx.redis.zrangebyscore(keys.DIRTY, "-inf", now_ms(), start=0, num=1)
    if due:
        kick_drain(ctx)
    return bool(due)


class Watcher(threading.Thread):
    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(name="due-watcher", daemon=True)
        self.ctx = ctx
        self.stopping = threading.Event()

    def run(self) -> None:
        flushed = time.monotonic()
        while not self.stopping.wait(WATCH_INTERVAL_S):
            try:
                check_once(self.ctx)
                if time.monotonic() - flushed > METRICS_FLUSH_S:
                    self.ctx.histograms.flush(self.ctx.redis)
                    flushed = time.monotonic()
            except (RedisError, OSError) as exc:
                log.warning("watcher cannot reach Redis", extra={"error": type(exc).__name__})

    def stop(self) -> None:
        self.stopping.set()
