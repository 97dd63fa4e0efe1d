"""Dead letters: webhook deliveries out of retries, kept as failed RQ jobs an operator can requeue.

A dead letter has the delivery's id as its job id, so requeueing it (`gms-relay requeue-failed`, or
rq-dashboard) sends the same bytes under the same `webhook-id`; the chat's later deliveries wait
behind it until it is delivered or skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from shared import keys
from shared.settings import Settings
from workers.webhook_send import Delivery

if TYPE_CHECKING:
    from workers.webhooks import WebhookDispatcher


class DeliveryFailed(Exception):
    """The endpoint did not accept a requeued delivery; RQ puts it back in the failed registry."""


def dead_letter(client: redis.Redis, settings: Settings, delivery: Delivery, reason: str) -> None:
    """Record the delivery as a failed RQ job (same id): requeueing it sends it again."""
    queue = Queue(keys.WEBHOOK_QUEUE, connection=client, serializer=JSONSerializer)
    ttl = settings.dead_letter_ttl_s
    job = queue.create_job(
        keys.WEBHOOK_JOB,
        args=(delivery.sink, delivery.session_id, delivery.id),
        job_id=delivery.id,
        result_ttl=0,
        failure_ttl=ttl,
        timeout=settings.webhook_timeout_ms // 1000 + 10,
        description=f"webhook {delivery.id} to sink {delivery.sink} for chat {delivery.session_id}",
        status=JobStatus.FAILED,
    )
    job.origin = keys.WEBHOOK_QUEUE
    pipe = client.pipeline()
    pipe.sadd(keys.RQ_QUEUES, keys.rq_queue(keys.WEBHOOK_QUEUE))
    FailedJobRegistry(queue=queue).add(job, ttl=ttl, exc_string=reason, pipeline=pipe)
    Result.create_failure(job, ttl, exc_string=reason, pipeline=pipe)
    pipe.execute()


def deliver_requeued(dispatcher: WebhookDispatcher, sink: int, session_id: str, delivery_id: str) -> str:
    """An operator requeued a dead-lettered delivery: send it once more, in place."""
    client = dispatcher.redis
    body = client.hget(keys.delivery(delivery_id), "body")
    inflight = client.get(keys.inflight(sink, session_id))
    if not isinstance(body, bytes) or inflight != delivery_id.encode():
        return "stale"  # delivered or skipped meanwhile
    failure = dispatcher.sinks.send(Delivery(delivery_id, sink, session_id, body, 0))
    if failure is not None:
        raise DeliveryFailed(failure.reason)
    if dispatcher.finish(delivery_id):
        dispatcher.pump()
    return "delivered"
