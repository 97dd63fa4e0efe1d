"""`gms-relay worker`: one non-forking RQ worker on all of the relay's queues, with the scheduler.

RQ's work loop gives up on some Redis errors ("found an unhandled exception, quitting"); a Redis
restart must not take the workers down with it, so the loop is restarted once Redis answers again.
Only SIGTERM/SIGINT (RQ's warm shutdown: the current job finishes first) or `--burst` end the process.
"""

from __future__ import annotations

import logging
import signal
import threading

import redis
from redis.exceptions import RedisError
from rq.worker import DequeueStrategy

from shared.logs import configure_logging
from shared.settings import Settings
from workers.context import WorkerContext, set_context
from workers.rq_worker import relay_worker

log = logging.getLogger("gms_relay.worker")


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> int:
    configure_logging(settings.log_level)
    context = WorkerContext.build(settings)
    context.start_watcher()
    set_context(context)
    connection = redis.Redis.from_url(settings.redis_url)
    try:
        while True:
            worker = relay_worker(connection, name)
            try:
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
            if not _wait_for_redis(connection, settings.redis_retry_cap_ms / 1000):
                return 0
    finally:
        context.close()  # lets in-flight webhook deliveries finish
        log.info("worker stopped")


def _wait_for_redis(connection: redis.Redis, cap_s: float) -> bool:
    """Wait until Redis answers; False if asked to stop meanwhile."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        delay = 0.1
        while not stop.is_set():
            try:
                connection.ping()
                return True
            except (RedisError, OSError):
                stop.wait(delay)
                delay = min(delay * 2, cap_s)
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
