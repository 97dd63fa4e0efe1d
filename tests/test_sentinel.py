"""Sentinel for real: a primary, a replica and one Sentinel on loopback (tests/sentinel_cluster.py).

Clients built from REDIS_SENTINELS talk to the primary with REDIS_URL's password and db, follow it
through a failover (RQ's scheduler too, whose pool RQ rebuilds from the worker's connection). The
ingress's INGRESS_ACK=replicated answers 200 only once the replica holds the push, and 503 (saying the
push is stored but not acknowledged) while the replica does not answer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from rq import Queue
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from starlette.testclient import TestClient

from ingress.app import create_app
from shared import keys
from shared.errors import ConfigError
from shared.redis_clients import (
    async_client,
    check_ack_supported,
    describe,
    follow_primary,
    primary_url,
    sync_client,
)
from shared.redis_server import free_port
from shared.settings import Settings, load_settings
from simulator.sender import PushSender
from simulator.server import ChatServer
from simulator.transcript import EventSpec
from tests.e2e.checks import stream
from tests.processes import relay_env, relay_processes, wait_for
from tests.pushes import body, event, payload_message, trigger_message
from tests.sentinel_cluster import Node, SentinelCluster, sentinel_available
from tests.test_stack import Dashboard, gms_relay_up, stack_env

pytestmark = pytest.mark.timeout(120)

PASSWORD = "primary-secret"
SENTINEL_PASSWORD = "sentinel-secret"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    if not sentinel_available():  # CI installs them (.ci/run): a missing one is a failure, named
        pytest.fail("needs Debian's redis-server and redis-sentinel packages", pytrace=False)
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


class _CutShort(Exception):
    pass


def _cut_short(*_: object) -> None:
    raise _CutShort


def test_a_read_cut_short_by_an_exception_closes_its_connection(settings: Settings) -> None:
    """As RQ's SIGTERM handler cuts its idle BLPOP short (StopRequested): the connection, its reply
    still due, is closed rather than pooled, so the next command (RQ's register_death) gets its own
    reply on a fresh one. redis-py's SentinelManagedConnection kept it open: the next command queued
    behind the BLPOP and hung."""
    previous = signal.signal(signal.SIGALRM, _cut_short)
    try:
        with sync_client(settings, socket_connect_timeout=2) as client:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(_CutShort):
                client.blpop(["nothing-comes"], timeout=30)
            pooled = client.connection_pool._available_connections
            assert pooled and all(not conn.is_connected for conn in pooled)
            signal.setitimer(signal.ITIMER_REAL, 5)  # the bug: a hang, cut short here
            assert client.ping()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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


@pytest.fixture
def ingress(cluster: SentinelCluster, settings: Settings) -> Iterator[TestClient]:
    """The ingress app at INGRESS_ACK=replicated, its Redis found through the Sentinel."""
    app = create_app(load_settings({**cluster.env(db=3), "INGRESS_ACK": "replicated"}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def replica(cluster: SentinelCluster) -> Iterator[Node]:
    [node] = cluster.replicas()
    yield node
    node.resume()
    cluster.wait_replicating(node)


def session_on(node: Node, session_id: str) -> dict[bytes, bytes]:
    with node.client(db=3) as client:
        found = client.hgetall(keys.session(session_id))
    assert isinstance(found, dict)
    return found


def test_replicated_answers_200_once_the_replica_holds_the_push(ingress: TestClient, replica: Node) -> None:
    reply = ingress.post("/push", content=body(trigger_message(3, session_id="s-rep")))
    assert reply.status_code == 200 and reply.json() == {"status": "queued"}
    assert session_on(replica, "s-rep"), "acknowledged: the replica holds it already"


def test_replicated_answers_503_while_no_replica_confirms_and_says_nothing_was_acknowledged(
    cluster: SentinelCluster, ingress: TestClient, replica: Node
) -> None:
    replica.pause()  # SIGSTOP: connected, silent
    trigger = body(trigger_message(3, session_id="s-paused"))
    refused = ingress.post("/push", content=trigger)
    assert refused.status_code == 503
    assert refused.json()["error"] == "not_replicated"
    assert "stored on the Redis primary" in refused.json()["detail"]
    assert "not acknowledged" in refused.json()["detail"]
    payload = body(payload_message([event(1), event(2)], chat_id="s-payload"), device_id="d-payload")
    assert ingress.post("/push", content=payload).status_code == 503
    assert session_on(cluster.primary(), "s-paused"), "in the primary, unacknowledged: a resend is safe"
    replica.resume()
    cluster.wait_replicating(replica)
    # Chat Server's resends: the trigger is stored like the first, the payload's events are there.
    assert ingress.post("/push", content=trigger).json() == {"status": "queued"}
    again = ingress.post("/push", content=payload)
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    metrics = ingress.get("/metrics").text
    assert 'gms_relay_pushes_total{kind="trigger",outcome="not_replicated"} 1' in metrics


def test_stored_answers_200_without_the_replica(cluster: SentinelCluster, replica: Node) -> None:
    app = create_app(load_settings(cluster.env(db=3)))  # INGRESS_ACK=stored, the default
    with TestClient(app, raise_server_exceptions=False) as client:
        replica.pause()
        reply = client.post("/push", content=body(trigger_message(3, session_id="s-stored")))
    assert reply.status_code == 200 and reply.json() == {"status": "queued"}


def test_replicated_fsynced_is_refused_where_redis_has_no_waitaof(cluster: SentinelCluster) -> None:
    """Debian bookworm's Redis 7.0 has no WAITAOF (7.2): the ingress refuses to start with that level."""
    env = {**cluster.env(), "INGRESS_ACK": "replicated+fsynced"}
    with cluster.primary().client() as primary:
        version = str(primary.info("server")["redis_version"])
    if tuple(int(n) for n in version.split(".")[:2]) >= (7, 2):
        check_ack_supported(load_settings(env))  # supported: nothing to refuse
        return
    with pytest.raises(ConfigError, match=r"INGRESS_ACK=replicated\+fsynced needs WAITAOF \(Redis >= 7.2\)"):
        check_ack_supported(load_settings(env))
    started = subprocess.run(
        [sys.executable, "-m", "ingress", "--port", "0"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2 and "configuration error: INGRESS_ACK=replicated+fsynced" in started.stderr
    assert f"runs Redis {version}" in started.stderr


@pytest.mark.failover
def test_the_ingress_leaves_the_old_primary_before_sentinel_demotes_it(
    cluster: SentinelCluster, settings: Settings
) -> None:
    """After SENTINEL FAILOVER the old primary still accepts writes until Sentinel demotes it (its next
    INFO round, up to 10 s): the ingress asks the Sentinels every SENTINEL_CHECK_MS and moves its held
    connections to the new primary while the old one is still a primary."""
    app = create_app(load_settings(cluster.env(db=3)))  # INGRESS_ACK=stored
    numbers = iter(range(1_000_000))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert (
            client.post("/push", content=body(trigger_message(3, session_id="s-before"))).status_code == 200
        )
        old = cluster.primary()
        new = cluster.failover(wait_demoted=False)

        def stored_on_new() -> bool:
            session_id = f"s-moved-{next(numbers)}"
            reply = client.post("/push", content=body(trigger_message(3, session_id=session_id)))
            return reply.status_code == 200 and bool(session_on(new, session_id))

        wait_for(stored_on_new, timeout_s=30)
        assert old.info().get("role") == "master", "the old primary was not demoted yet"
    cluster.wait_replicating(old)
    cluster.wait_sentinels_agree(new)


@pytest.mark.failover
@pytest.mark.timeout(240)
def test_the_ingress_and_a_worker_follow_a_failover_without_a_restart(
    cluster: SentinelCluster, settings: Settings, chat_server: ChatServer
) -> None:
    """Real `gms-relay ingress` and `gms-relay worker` processes configured through REDIS_SENTINELS
    (INGRESS_ACK=replicated): events before SENTINEL FAILOVER and after it reach the stream on the
    new primary, once each and in order, and the same processes are still the ones answering."""
    api_token = "sentinel-api-token"
    env = relay_env(
        **cluster.env(db=3), GMS_URL=chat_server.base_url, API_TOKEN=api_token, INGRESS_ACK="replicated"
    )
    chat = chat_server.store.create_chat(
        service="customer-support", nickname="Kim", device_id="dev-failover", mode="reliable"
    )

    def agent_says(text: str) -> None:
        chat_server.store.append(chat.chat_id, [EventSpec("Message", "agent", text, {"messageType": "text"})])

    def delivered(node: Node) -> list[int]:
        with node.client(db=3) as client:
            return [int(e["index"]) for e in stream(client, chat.device_id) if "index" in e]

    with (
        relay_processes(env, workers=1) as relay,
        PushSender(
            f"{relay.base_url}/push", chat_server.store, resend_delay_s=1, resend_attempts=60
        ) as sender,
    ):
        registration = {"deviceId": chat.device_id, "userId": chat.user_id, "secureKey": chat.secure_key}
        reply = httpx.put(
            f"{relay.base_url}/sessions/{chat.chat_id}",
            json={**registration, "alias": chat.alias, "service": "customer-support"},
            headers={"Authorization": f"Bearer {api_token}"},
            timeout=10,
        )
        assert reply.status_code == 204, reply.text
        agent_says("before the failover")
        old = cluster.primary()
        wait_for(lambda: delivered(old) == [1, 2])
        processes = [(child.process.pid, child) for child in relay.stack.children]
        new = cluster.failover()
        agent_says("after the failover")
        agent_says("still there?")
        wait_for(lambda: delivered(new) == [1, 2, 3, 4], timeout_s=90)
        wait_for(lambda: sender.idle(include_pending=False), timeout_s=30)
        assert all(child.alive() and child.process.pid == pid for pid, child in processes), "no restart"
        assert any(r.acked for r in sender.records(chat.chat_id)[-2:]), "the ingress answers 200 again"


def test_rqs_own_command_line_reaches_the_primary_through_workers_rq_config(
    cluster: SentinelCluster, settings: Settings
) -> None:
    """`rq worker -c workers.rq_config` (README: RQ's command line runs the relay's jobs too) finds the
    primary through the Sentinel, with REDIS_URL's password and db: a job queued there is run."""
    with sync_client(settings) as client:
        job = Queue("gms-relay", connection=client, serializer=JSONSerializer).enqueue("os.getpid")
        command = ["worker", "-c", "workers.rq_config", "--burst", "-S", "rq.serializers.JSONSerializer"]
        ran = subprocess.run(
            [sys.executable, "-m", "rq.cli", *command, "-w", "rq.SimpleWorker", "gms-relay"],
            env={**os.environ, **cluster.env(db=3)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        job.refresh()  # type: ignore[no-untyped-call]
        assert job.get_status() == "finished" and isinstance(job.return_value(), int)


@pytest.mark.timeout(180)
def test_up_through_sentinel_delivers_and_its_dashboard_reads_the_primary(
    cluster: SentinelCluster, settings: Settings, tmp_path: Path
) -> None:
    """`gms-relay up --simulate` with the Sentinel variables: the banner names the Sentinels and the
    primary they name, the demo traffic reaches the primary's streams (REDIS_URL's db), and
    rq-dashboard (the relay's launcher) lists the relay's queues from there."""
    env = {**stack_env(), **cluster.env(db=3)}
    dashboard_port = free_port()
    dashboard = Dashboard(dashboard_port)
    with gms_relay_up(tmp_path / "data", free_port(), dashboard_port, env) as lines:
        wait_for(lambda: any("(REDIS_SENTINELS)" in line for line in lines), timeout_s=60)
        line = next(line for line in lines if "(REDIS_SENTINELS)" in line)
        primary = cluster.primary()
        assert f"primary now at redis://:***@127.0.0.1:{primary.port}/3" in line and PASSWORD not in line
        with primary.client(db=3) as client:
            wait_for(lambda: any(client.xlen(k) > 0 for k in client.scan_iter("gms-relay:events:*")), 90)

        def queues() -> set[str]:
            listed = dashboard.get("/data/queues.json")
            return set() if listed is None else {q["name"] for q in listed["queues"]}

        wait_for(lambda: {"gms-relay", "gms-relay-webhooks"} <= queues(), timeout_s=60)
        assert not (tmp_path / "data" / "redis").exists(), "no Redis embedded"
        # The banner's ready-to-paste commands, in a shell with the same variables: events, no password.
        at = next(i for i, line in enumerate(lines) if "events     Redis streams" in line)
        pasted = [lines[at + 1].strip(), lines[at + 2].strip().removeprefix("or without redis-cli: ")]
        assert all(PASSWORD not in command for command in pasted)
        for command in pasted:
            ran = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30)
            assert ran.returncode == 0 and "gms-relay:events:" in ran.stdout + ran.stderr, command
