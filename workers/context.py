"""Per-process state of a worker: settings, pooled Redis and HTTP clients, scripts, metrics.

Built once per process on first use, so `rq worker` (which imports jobs by dotted path) and
`gms-relay worker` share the same code path. It builds each long-lived component from the few objects
that component uses; none of them gets the context back.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
from redis.exceptions import RedisError

from shared.errors import ConfigError
from shared.gms import ChatApi
from shared.ids import IdSource
from shared.metrics import Histograms
from shared.redis_clients import PrimaryWatch, sync_client
from shared.scripts import Scripts, ScriptSources
from shared.settings import Settings, load_settings
from workers.refresh import Refresher
from workers.transitions import Transitions
from workers.watcher import Watcher
from workers.webhook_send import Sinks
from workers.webhooks import WebhookDispatcher

log = logging.getLogger("gms_relay.worker")


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    scripts: Scripts
    ids: IdSource
    histograms: Histograms
    gms: ChatApi
    pool: ThreadPoolExecutor
    refresher: Refresher
    transitions: Transitions
    webhooks: WebhookDispatcher
    watcher: Watcher
    primary_watch: PrimaryWatch  # with Sentinel: follows a moved primary (RQ's connection is added)

    def start_watcher(self) -> None:
        if not self.watcher.is_alive():
            self.watcher.start()
        if not self.primary_watch.is_alive():
            self.primary_watch.start()

    def close(self) -> None:
        if self.watcher.is_alive():
            self.watcher.stop()
            self.watcher.join(5)
        self.primary_watch.stop()
        self.pool.shutdown(wait=True)
        self.webhooks.close()  # lets in-flight deliveries finish
        try:
            self.histograms.flush(self.redis)
        except (RedisError, OSError) as exc:  # stopping while Redis is down: the rest still closes
            log.warning(
                "latency histograms not flushed: Redis unreachable", extra={"error": type(exc).__name__}
            )
        self.gms.close()
        self.redis.close()

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        if not settings.gms_url:
            raise ConfigError("GMS_URL is required by workers (base URL of the GMS cluster)")
        client = sync_client(settings, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)
        scripts = ScriptSources.build(settings).register(client)
        ids = IdSource()
        histograms = Histograms()
        gms = ChatApi(settings.gms_url, settings.refresh_timeout_ms / 1000)
        webhooks = WebhookDispatcher(client, scripts, ids, settings, Sinks(settings, histograms))
        return cls(
            settings=settings,
            redis=client,
            scripts=scripts,
            ids=ids,
            histograms=histograms,
            gms=gms,
            pool=ThreadPoolExecutor(max_workers=settings.claim_batch, thread_name_prefix="refresh"),
            refresher=Refresher(gms, settings, histograms),
            transitions=Transitions(scripts, ids, settings),
            webhooks=webhooks,
            watcher=Watcher(client, scripts, ids, webhooks.pump, histograms, settings),
            primary_watch=PrimaryWatch(settings, [client]),
        )


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
