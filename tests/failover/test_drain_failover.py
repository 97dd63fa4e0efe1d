"""A drain running when the primary dies: a real `gms-relay worker` through a Sentinel, the primary
SIGKILLed mid-drain and its replica promoted after down-after-milliseconds (8 s: longer than the
drain's client retries, so the drain does lose the primary). The drain job ends as finished on the new
primary, and RQ's failed registry stays empty: no failed-jobs alert after a failover (before, the job
was left started, then moved to the failed registry as abandoned, or failed with the Redis error)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from gms_relay.stack import relay_command
from shared import keys
from tests.failover.harness import require_binaries
from tests.processes import relay_env, wait_for
from tests.sentinel_cluster import SentinelCluster

pytestmark = [pytest.mark.failover, pytest.mark.timeout(180)]

DB = 5
DOWN_AFTER_MS = 8000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    require_binaries()
    with SentinelCluster(tmp_path / "cluster", down_after_ms=DOWN_AFTER_MS) as running:
        yield running


def states(client: redis.Redis) -> list[object]:
    return [client.hget(key, "state") for key in client.smembers("rq:workers")]


def test_a_drain_that_loses_the_primary_finishes_on_the_new_one(
    cluster: SentinelCluster, tmp_path: Path
) -> None:
    env = {**cluster.env(db=DB), "GMS_URL": "http://127.0.0.1:9"}
    env.update(DRAIN_LINGER_MS="3000", DRAIN_BUDGET_MS="4000")  # running when the primary dies
    log_path = tmp_path / "worker.log"
    old = cluster.primary()
    with log_path.open("wb") as log, old.client(db=DB) as client:
        worker = subprocess.Popen(relay_command("worker"), env=relay_env(**env), stderr=log)
        try:
            wait_for(lambda: states(client) == [b"idle"], timeout_s=60)
            queue = Queue(keys.DRAIN_QUEUE, connection=client, serializer=JSONSerializer)
            job = queue.enqueue(keys.DRAIN_JOB, job_timeout=60)
            wait_for(lambda: states(client) == [b"busy"], timeout_s=30)
            client.wait(1, 2000)  # the job's start is on the replica
            old.kill()
            new = cluster.wait_for_new_primary(old, timeout_s=60)
            with new.client(db=DB) as promoted:

                def status() -> object:
                    return promoted.hget(f"rq:job:{job.id}", "status")

                with contextlib.suppress(AssertionError):
                    wait_for(lambda: status() != b"started", timeout_s=45)
                assert status() == b"finished", f"the drain job is {status()!r}: {log_path.read_text()}"
                assert promoted.zcard(f"rq:failed:{keys.DRAIN_QUEUE}") == 0
                assert promoted.zcard(f"rq:wip:{keys.DRAIN_QUEUE}") == 0, "nothing left to abandon"
            os.kill(worker.pid, signal.SIGTERM)
            assert worker.wait(30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
