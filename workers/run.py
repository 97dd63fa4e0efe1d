"""`gms-relay worker`: one non-forking RQ worker on all of the relay's queues, with the scheduler
(which moves webhook retries back into the queue when their backoff ends)."""

from __future__ import annotations

import logging

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker import DequeueStrategy

from shared import keys
from shared.logs import configure_logging
from shared.settings import Settings
from workers.context import WorkerContext, set_context

log = logging.getLogger("gms_relay.worker")


def run_worker(settings: Settings, burst: bool = False, name: str | None = None) -> int:
    configure_logging(settings.log_level)
    context = WorkerContext.build(settings)
    context.start_watcher()
    set_context(context)
    connection = redis.Redis.from_url(settings.redis_url)
    queues = [Queue(q, connection=connection, serializer=JSONSerializer) for q in keys.QUEUES]
    # SimpleWorker: no fork per job (RQ's forking Worker costs ~10 ms per job here).
    worker = SimpleWorker(queues, connection=connection, serializer=JSONSerializer, name=name)
    worked = worker.work(
        burst=burst,
        with_scheduler=True,
        # RQ logs every job at INFO; keep that for DEBUG.
        logging_level=settings.log_level if settings.log_level != "INFO" else "WARNING",
        dequeue_strategy=DequeueStrategy.ROUND_ROBIN,
    )
    context.close()  # lets in-flight webhook deliveries finish
    log.info("worker stopped", extra={"worked": worked})
    return 0
