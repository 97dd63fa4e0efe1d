"""`gms-relay worker`: one non-forking RQ worker on all of the relay's queues, with the scheduler.

A worker may start before Redis does (compose, a host reboot) and Redis may restart under it: either
way the worker waits for Redis, saying so in a log line, and then (re)starts RQ's work loop, which
gives up on some Redis errors ("found an unhandled exception, quitting"). Only SIGTERM/SIGINT (RQ's
warm shutdown: the current job finishes first) or `--burst` end the process.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import redis
from redis.exceptions import RedisError
from rq.worker import DequeueStrategy

from shared.logs import configure_logging
from shared.redis_clients import describe, sync_client
from shared.settings import Settings
from workers.context import WorkerContext, set_context
from workers.rq_worker import RelayWorker, relay_worker

log = logging.getLogger("gms_relay.worker")

# While Redis stays down, repeat the waiting line this often (each retry is not worth a line).
WAITING_LOG_EVERY_S = 30.0


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> int:
    configure_logging(settings.log_level)
    context = WorkerContext.build(settings)
    # RQ's own connection (its BLPOP, registrations, and the scheduler, which rebuilds a pool from this
    # one's class and options: with Sentinel its connections still ask the Sentinels for the primary).
    connection = sync_client(settings, socket_connect_timeout=2)
    context.primary_watch.clients.append(connection)
    try:
        # The watcher and RQ both need Redis from their first step: start them once it answers.
        if not _wait_for_redis(connection, settings, "the worker starts once it answers"):
            return 0
        context.start_watcher()
        set_context(context)
        while True:
            worker: RelayWorker | None = None
            try:
                worker = relay_worker(connection, name)
                worker.work(
                    burst=burst,
                    with_scheduler=True,
                    # RQ logs every job at INFO; keep that for DEBUG.
                    logging_level=settings.log_level if settings.log_level != "INFO" else "WARNING",
                    dequeue_strategy=DequeueStrategy.ROUND_ROBIN,
                )
            except (RedisError, OSError) as exc:  # RQ's teardown needs Redis too
                log.warning("worker loop failed", extra={"error": type(exc).__name__})
            # RQ records a SIGTERM/SIGINT here whether the worker was busy or idle.
            if burst or getattr(worker, "_shutdown_requested_date", None) is not None:
                return 0
            log.warning("RQ's work loop ended on an error; restarting it once Redis answers")
            if not _wait_for_redis(connection, settings, "then RQ's work loop restarts"):
                return 0
    finally:
        context.close()  # lets in-flight webhook deliveries finish
        log.info("worker stopped")


def _wait_for_redis(connection: redis.Redis, settings: Settings, then: str) -> bool:
    """Wait until Redis answers, with a capped backoff; False if asked to stop (SIGTERM/SIGINT) meanwhile.

    The first failed attempt is logged at once, with REDIS_URL (no password) or the Sentinels, and what
    is next, then every WAITING_LOG_EVERY_S while Redis stays down, so the wait is visible without
    flooding the log.
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        delay = 0.1
        logged_at: float | None = None
        while not stop.is_set():
            try:
                connection.ping()
            except (RedisError, OSError) as exc:
                if logged_at is None or time.monotonic() - logged_at >= WAITING_LOG_EVERY_S:
                    log.warning(
                        f"waiting for Redis at {describe(settings)}; {then}",
                        extra={"error": type(exc).__name__},
                    )
                    logged_at = time.monotonic()
                stop.wait(delay)
                delay = min(delay * 2, settings.redis_retry_cap_ms / 1000)
                continue
            if logged_at is not None:
                log.info("Redis answers", extra={"redis": describe(settings)})
            return True
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
