"""Per-process state of a worker: settings, pooled Redis and HTTP clients, scripts, metrics.

Built once per process on first use, so `rq worker` (which imports jobs by dotted path) and
`gms-relay worker` share the same code path.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.errors import ConfigError
from shared.gms import ChatApi
from shared.metrics import Histograms
from shared.scripts import ScriptSources
from shared.settings import Settings, load_settings
from workers.watcher import Watcher
from workers.webhooks import WebhookDispatcher

# Chats refreshed concurrently by one worker process (Refresh is I/O bound).
CLAIM_BATCH = 16


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    scripts: dict[str, Any]
    gms: ChatApi
    pool: ThreadPoolExecutor
    histograms: Histograms = field(default_factory=Histograms)
    webhooks: WebhookDispatcher = field(init=False)
    watcher: Watcher | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _prefix: str = field(default_factory=lambda: secrets.token_hex(16))

    def job_id(self, kind: str) -> str:
        """Job ids unique across processes without a round trip: 128 random bits per process (not the
        pid: in containers every process is pid 1) and a counter. A collision would hand one chat's
        webhook body to another's delivery id."""
        return f"{kind}-{self._prefix}-{next(self._ids)}"

    def start_watcher(self) -> None:
        if self.watcher is None:
            self.watcher = Watcher(self)
            self.watcher.start()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher.join(5)
        for pool in [self.pool, *self.webhooks.pools]:
            pool.shutdown(wait=True)
        self.histograms.flush(self.redis)
        self.gms.close()
        for client, _path in self.webhooks.clients:
            client.close()
        self.redis.close()

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        if not settings.gms_url:
            raise ConfigError("GMS_URL is required by workers (base URL of the GMS cluster)")
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        context = cls(
            settings=settings,
            redis=client,
            scripts=ScriptSources.build(settings).register(client),
            gms=ChatApi(settings.gms_url, settings.refresh_timeout_ms / 1000),
            pool=ThreadPoolExecutor(max_workers=CLAIM_BATCH, thread_name_prefix="refresh"),
        )
        context.webhooks = WebhookDispatcher(context)
        return context


_context: WorkerContext | None = None
_lock = threading.Lock()


def get_context() -> WorkerContext:
    global _context
    with _lock:
        if _context is None:
            _context = WorkerContext.build(load_settings(os.environ))
            _context.start_watcher()  # `rq worker` runs our jobs without gms-relay's start-up
        return _context


def set_context(context: WorkerContext | None) -> None:
    """Install a context built from explicit settings (the CLI and tests do this)."""
    global _context
    with _lock:
        _context = context
