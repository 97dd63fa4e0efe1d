"""Sentinel for real: a primary, a replica and one Sentinel on loopback (tests/sentinel_cluster.py).

Clients built from REDIS_SENTINELS talk to the primary with REDIS_URL's password and db, follow it
through a failover (RQ's scheduler too, whose pool RQ rebuilds from the worker's connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.scheduler import RQScheduler

from shared.redis_clients import async_client, describe, follow_primary, primary_url, sync_client
from shared.settings import Settings, load_settings
from tests.sentinel_cluster import SentinelCluster, sentinel_available

pytestmark = [
    pytest.mark.skipif(not sentinel_available(), reason="needs redis-server and redis-sentinel"),
    pytest.mark.timeout(120),
]

PASSWORD = "primary-secret"
SENTINEL_PASSWORD = "sentinel-secret"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with SentinelCluster(
        tmp_path_factory.mktemp("sentinel"), password=PASSWORD, sentinel_password=SENTINEL_PASSWORD
    ) as running:
        yield running


@pytest.fixture
def settings(cluster: SentinelCluster) -> Settings:
    with cluster.primary().client() as primary:
        primary.flushall()
    return load_settings(cluster.env(db=3))


def port_of(client: redis.Redis) -> int:
    """The port of the server this client's next command reaches."""
    return int(client.info("server")["tcp_port"])


def test_sync_clients_reach_the_primary_with_the_password_and_db_of_redis_url(
    cluster: SentinelCluster, settings: Settings
) -> None:
    primary, [replica] = cluster.primary(), cluster.replicas()
    with sync_client(settings) as client:
        assert port_of(client) == primary.port
        client.set("written-through-sentinel", "yes")
        client.wait(1, 1000)
    with primary.client() as direct:
        direct.select(3)
        assert direct.get("written-through-sentinel") == b"yes"
    with replica.client() as direct:
        assert direct.execute_command("SELECT", 3) and direct.get("written-through-sentinel") == b"yes"
    assert f":{primary.port}/3" in primary_url(settings) and PASSWORD in primary_url(settings)
    assert "REDIS_SENTINELS" in describe(settings) and PASSWORD not in describe(settings)


def test_async_clients_reach_the_primary(cluster: SentinelCluster, settings: Settings) -> None:
    async def main() -> tuple[int, object]:
        client = async_client(settings, socket_timeout=1, socket_connect_timeout=1)
        try:
            await client.set("async-key", "v")
            info = await client.info("server")
            return int(info["tcp_port"]), await client.get("async-key")
        finally:
            await client.aclose()

    assert asyncio.run(main()) == (cluster.primary().port, b"v")


def test_a_wrong_sentinel_password_is_an_error_not_a_hang(cluster: SentinelCluster) -> None:
    wrong = load_settings({**cluster.env(), "REDIS_SENTINEL_PASSWORD": "nope"})
    with sync_client(wrong, socket_timeout=1, socket_connect_timeout=1) as client:
        with pytest.raises(redis.RedisError):
            client.ping()


@pytest.mark.failover
def test_clients_and_rq_scheduler_follow_the_primary_through_a_failover(
    cluster: SentinelCluster, settings: Settings
) -> None:
    """No client is rebuilt: each one's next command after SENTINEL FAILOVER reaches the new primary.
    RQ's scheduler rebuilds its pool from the worker connection's class and options (rq/scheduler.py);
    its connections still ask the Sentinels, so it follows too."""
    with sync_client(settings) as client, sync_client(settings) as watched:
        scheduler = RQScheduler([Queue("q", connection=client)], connection=client)
        old = cluster.primary()
        assert port_of(client) == port_of(watched) == port_of(scheduler.connection) == old.port
        new = cluster.failover()
        assert new is not old
        # Sentinel killed the demoted primary's clients (CLIENT KILL): the retry reconnects there.
        assert port_of(client) == new.port
        assert client.set("after-failover", 1)
        assert port_of(scheduler.connection) == new.port
        # The scheduler writes there too: its lock, taken on the new primary.
        assert scheduler.acquire_locks() == {"q"}  # type: ignore[no-untyped-call]
        assert follow_primary(watched) == ("127.0.0.1", new.port)
        scheduler.release_locks()  # type: ignore[no-untyped-call]
        scheduler.connection.close()
