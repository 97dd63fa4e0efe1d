"""SIGTERM through Sentinel: a real `gms-relay worker` configured with REDIS_SENTINELS exits 0, idle
(RQ's handler cuts its BLPOP short) and while a drain runs (the drain ends first).

The bug this guards: redis-py's sync SentinelManagedConnection kept a read cut short by an exception
open, reply still due, and pooled it; RQ's teardown then sent its pipeline behind the pending BLPOP
and waited for it (405 s). No failover takes place here; the marker is for the real Sentinel cluster.
"""

from __future__ import annotations

import contextlib
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
from shared.redis_clients import sync_client
from shared.settings import load_settings
from tests.failover.harness import require_binaries
from tests.processes import relay_env, wait_for
from tests.sentinel_cluster import SentinelCluster

pytestmark = [pytest.mark.failover, pytest.mark.timeout(120)]

DB = 4
EXIT_DEADLINE_S = 10  # an observable deadline: the worker stopped in ~0.3 s once fixed
LINGER_MS = 3000  # a drain with nothing due keeps looking this long: it is running when SIGTERM comes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    require_binaries()
    with SentinelCluster(tmp_path_factory.mktemp("shutdown")) as running:
        yield running


def worker_states(client: redis.Redis) -> list[object]:
    return [client.hget(key, "state") for key in client.smembers("rq:workers")]


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "draining"])
def test_a_worker_through_sentinel_exits_on_sigterm(
    cluster: SentinelCluster, tmp_path: Path, busy: bool
) -> None:
    env = {
        **cluster.env(db=DB),
        "GMS_URL": "http://127.0.0.1:9",
        "DRAIN_LINGER_MS": str(LINGER_MS),
        "DRAIN_BUDGET_MS": str(LINGER_MS + 1000),
    }
    settings = load_settings(env)
    stderr_path = tmp_path / "worker.stderr"
    with sync_client(settings, socket_timeout=5) as client:
        client.flushdb()
        with stderr_path.open("wb") as stderr:
            worker = subprocess.Popen(relay_command("worker"), env=relay_env(**env), stderr=stderr)
        try:
            # In RQ's work loop, whose handlers make SIGTERM a warm shutdown.
            wait_for(lambda: worker_states(client) == [b"idle"], timeout_s=60)
            if busy:
                queue = Queue(keys.DRAIN_QUEUE, connection=client, serializer=JSONSerializer)
                job = queue.enqueue(keys.DRAIN_JOB)
                wait_for(lambda: worker_states(client) == [b"busy"], timeout_s=30)
            worker.send_signal(signal.SIGTERM)
            code: int | None = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = worker.wait(EXIT_DEADLINE_S)
            assert code is not None, f"the worker still runs {EXIT_DEADLINE_S} s after SIGTERM"
            assert code == 0, stderr_path.read_text()
            assert client.smembers("rq:workers") == set(), "RQ's teardown (register_death) completed"
            if busy:
                assert job.get_status(refresh=True) == "finished", "the drain ended, then the worker"
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert "Traceback" not in stderr_path.read_text()
