"""The relay's RQ worker: a non-forking `SimpleWorker` on the relay's queues, jobs in RQ's JSON format.

RQ lists a queue in its registry (`rq:queues`, what rq-dashboard's Queues page and `rq info` show) only
once a job is enqueued on it, and the relay puts a job on `gms-relay-webhooks` only when a delivery is
dead-lettered. A worker listens on both queues from its start, so it lists both as it registers.
`rq worker -w workers.rq_worker.RelayWorker -S rq.serializers.JSONSerializer gms-relay
gms-relay-webhooks` runs the same class.
"""

from __future__ import annotations

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from shared import keys


class RelayWorker(SimpleWorker):
    """SimpleWorker: no fork per job (RQ's forking Worker costs ~10 ms per job here)."""

    def register_birth(self) -> None:
        super().register_birth()  # type: ignore[no-untyped-call]
        self.connection.sadd(keys.RQ_QUEUES, *(keys.rq_queue(name) for name in self.queue_names()))


def relay_worker(connection: redis.Redis, name: str | None = None) -> RelayWorker:
    """A worker on all of the relay's queues; its constructor already talks to Redis (CLIENT SETNAME)."""
    queues = [Queue(q, connection=connection, serializer=JSONSerializer) for q in keys.QUEUES]
    return RelayWorker(queues, connection=connection, serializer=JSONSerializer, name=name)
