"""A thread per worker process that notices work falling due with no push to announce it.

Retry backoffs, payload gap waits, webhook retries and the leases of crashed workers all end
silently. Every WATCH_INTERVAL_MS the watcher starts due webhook deliveries this process has room for,
enqueues a drain when a chat is due, and flushes this process's metrics every METRICS_FLUSH_MS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.exceptions import RedisError

from shared import keys
from shared.clock import now_ms
from shared.ids import IdSource
from shared.metrics import Histograms
from shared.scripts import Scripts
from shared.settings import Settings

log = logging.getLogger("gms_relay.worker")


def kick_drain(scripts: Scripts, ids: IdSource) -> None:
    """Enqueue a drain job unless one is already waiting."""
    scripts["kick"](job_id=ids.new("drain"), now_ms=now_ms())


class Watcher(threading.Thread):
    def __init__(
        self,
        client: redis.Redis,
        scripts: Scripts,
        ids: IdSource,
        pump: Callable[[], object],
        histograms: Histograms,
        settings: Settings,
    ) -> None:
        super().__init__(name="due-watcher", daemon=True)
        self.redis = client
        self.scripts = scripts
        self.ids = ids
        self.pump = pump
        self.histograms = histograms
        self.interval_s = settings.watch_interval_ms / 1000
        self.flush_s = settings.metrics_flush_ms / 1000
        self.stopping = threading.Event()

    def check_once(self) -> bool:
        """One look: start due deliveries; kick a drain if a chat is due. True if a chat was due."""
        self.pump()
        due = self.redis.zrangebyscore(keys.DIRTY, "-inf", now_ms(), start=0, num=1)
        if due:
            kick_drain(self.scripts, self.ids)
        return bool(due)

    def run(self) -> None:
        flushed = time.monotonic()
        while not self.stopping.wait(self.interval_s):
            try:
                self.check_once()
                if time.monotonic() - flushed > self.flush_s:
                    self.histograms.flush(self.redis)
                    flushed = time.monotonic()
            except (RedisError, OSError) as exc:
                log.warning("watcher cannot reach Redis", extra={"error": type(exc).__name__})

    def stop(self) -> None:
        self.stopping.set()
