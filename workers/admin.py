"""Operator commands on dead-lettered webhook deliveries (RQ's failed registry).

An operator runs these by hand, often while something is already wrong: when Redis cannot be reached
they say so in one line naming REDIS_URL (or REDIS_SENTINELS) and exit 1, instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import redis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from shared import keys
from shared.redis_clients import describe, sync_client
from shared.settings import Settings
from workers.context import WorkerContext


def _registries(connection: redis.Redis) -> list[FailedJobRegistry]:
    return [
        FailedJobRegistry(queue=Queue(name, connection=connection, serializer=JSONSerializer))
        for name in keys.QUEUES
    ]


def _reporting_redis_errors(settings: Settings, command: Callable[[], int]) -> int:
    try:
        return command()
    except (RedisError, OSError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        print(f"gms-relay: cannot reach Redis at {describe(settings)}: {detail}", file=sys.stderr)
        return 1


def requeue_failed(settings: Settings, job_ids: list[str], all_jobs: bool) -> int:
    """Send dead-lettered jobs again (same job id, so the same webhook-id)."""
    if not job_ids and not all_jobs:
        print("give JOB_IDs or --all", file=sys.stderr)
        return 2
    return _reporting_redis_errors(settings, lambda: _requeue(settings, set(job_ids), all_jobs))


def _requeue(settings: Settings, wanted: set[str], all_jobs: bool) -> int:
    connection = sync_client(settings, socket_connect_timeout=2, socket_timeout=5)
    requeued = 0
    try:
        for registry in _registries(connection):
            for job_id in registry.get_job_ids():
                if all_jobs or job_id in wanted:
                    registry.requeue(job_id)
                    wanted.discard(job_id)
                    requeued += 1
    finally:
        connection.close()  # with Sentinel, its connections to the Sentinels too
    print(f"requeued {requeued} job(s)")
    if wanted:
        print(f"not in the failed registry: {' '.join(sorted(wanted))}", file=sys.stderr)
        return 1
    return 0


def skip_failed(settings: Settings, job_ids: list[str]) -> int:
    """Give up on dead-lettered deliveries: drop each and start the next delivery of its chat."""
    context = WorkerContext.build(settings)
    try:
        return _reporting_redis_errors(settings, lambda: _skip(context, job_ids))
    finally:
        context.close()


def _skip(context: WorkerContext, job_ids: list[str]) -> int:
    registry = _registries(context.redis)[keys.QUEUES.index(keys.WEBHOOK_QUEUE)]
    missing = []
    for job_id in job_ids:
        if job_id not in registry.get_job_ids():
            missing.append(job_id)
            continue
        job = Job.fetch(job_id, connection=context.redis, serializer=JSONSerializer)
        _sink, _session_id, delivery_id = job.args
        context.webhooks.finish(str(delivery_id))
        registry.remove(job, delete_job=True)
        print(f"skipped {job_id}")
    if missing:
        print(f"not in the failed registry: {' '.join(missing)}", file=sys.stderr)
    return 1 if missing else 0
