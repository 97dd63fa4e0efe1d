"""Fault injection: whatever crashes, every event reaches every sink once, in order (reliable mode)."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared import keys
from shared.redis_server import RedisServer
from simulator.receiver import WebhookReceiver
from simulator.server import ChatServer
from tests.faults.harness import assert_every_sink_once_in_order, faulty_run
from tests.processes import RelayProcesses, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def delivered(client: redis.Redis) -> int:
    return int(client.hget(keys.COUNTERS, "events_delivered") or 0)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, append-only file on, so the test can restart it."""
    server = RedisServer(tmp_path / "aof", appendonly=True)
    server.start()
    yield server
    server.stop()


def test_workers_killed_at_random_moments(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    rng = random.Random(5)

    def kill_repeatedly(relay: RelayProcesses) -> None:
        wait_for(lambda: delivered(redis_client) > 20)
        for _ in range(6):
            time.sleep(rng.uniform(0.2, 0.8))  # the fault's timing, not synchronisation
            relay.workers[rng.randrange(len(relay.workers))].signal(signal.SIGKILL)
            dead = [w for w in relay.workers if not w.alive() or w.process.poll() is not None]
            for worker in dead:
                relay.stop_worker(worker, signal.SIGKILL)
                relay.add_worker()

    with faulty_run(redis_server.url, chat_server, kill_repeatedly) as outcome:
        assert_every_sink_once_in_order(redis_client, outcome)


def test_redis_restarted_under_load(aof_redis: RedisServer, chat_server: ChatServer) -> None:
    client = redis.Redis.from_url(aof_redis.url)
    answers: list[int] = []

    def restart_redis(relay: RelayProcesses) -> None:
        wait_for(lambda: delivered(client) > 30)
        aof_redis.stop()  # graceful: the append-only file is flushed
        with httpx.Client() as http:
            answers.append(
                http.post(f"{relay.base_url}/push", content=b'{"deviceId":"x","message":"m"}').status_code
            )
            answers.append(http.get(f"{relay.base_url}/readyz").status_code)
        time.sleep(2.0)  # the outage's length
        aof_redis.start()
        wait_for(lambda: httpx.get(f"{relay.base_url}/readyz").status_code == 200)

    with faulty_run(aof_redis.url, chat_server, restart_redis) as outcome:
        assert answers == [503, 503]
        assert_every_sink_once_in_order(client, outcome)
    client.close()


def test_ingress_killed_and_restarted_under_load(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    def crash_ingress(relay: RelayProcesses) -> None:
        wait_for(lambda: delivered(redis_client) > 20)
        relay.restart_ingress(signal.SIGKILL)
        wait_for(lambda: delivered(redis_client) > 120)
        relay.restart_ingress(signal.SIGKILL)

    with faulty_run(redis_server.url, chat_server, crash_ingress) as outcome:
        assert_every_sink_once_in_order(redis_client, outcome)


def test_chat_api_failing_for_30_seconds(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    def gms_outage(relay: RelayProcesses) -> None:
        wait_for(lambda: delivered(redis_client) > 20)
        faults = chat_server.faults
        faults.fail_for(10.0)  # HTTP 503 for every Refresh
        wait_for(lambda: time.monotonic() > faults.fail_until, timeout_s=20)
        faults.fail_refresh_status1 = 0.5
        faults.refresh_delay_ms = 500  # half of the rest time out (REFRESH_TIMEOUT_MS is 400)
        time.sleep(10.0)  # the fault's length
        faults.fail_refresh_status1 = 0.0
        faults.refresh_delay_ms = 0
        faults.fail_for(10.0)

    with faulty_run(redis_server.url, chat_server, gms_outage, events_per_chat=20, rate=100.0) as outcome:
        assert_every_sink_once_in_order(redis_client, outcome, timeout_s=150)
    outcomes = {r.outcome for c in outcome.report.chats for r in c.refreshes}
    assert {"http503", "status1", "ok"} <= outcomes
    assert int(redis_client.hget(keys.COUNTERS, 'h:refresh{outcome="retry"}|count') or 0) > 0


def test_http_400_on_refresh_ends_the_chat_as_fatal(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    chat_server.faults.fail_refresh_http400_end = 0.05

    def nothing(relay: RelayProcesses) -> None:
        return None

    with faulty_run(redis_server.url, chat_server, nothing, chats=12, resend_attempts=5) as outcome:
        fatal = {
            c.session_id for c in outcome.report.chats if any(r.outcome == "http400_end" for r in c.refreshes)
        }
        assert fatal
        # A 400 ends the chat as `fatal`; if the customer had already left (-1), it stays `removed`.
        wait_for(lambda: all(redis_client.get(keys.ended(sid)) in (b"fatal", b"removed") for sid in fatal))
        assert b"fatal" in {redis_client.get(keys.ended(sid)) for sid in fatal}
        for sid in fatal:
            assert not redis_client.exists(keys.session(sid))


def test_webhook_receiver_down_for_twenty_seconds(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    receiver = WebhookReceiver()
    down_since: list[float] = []

    def receiver_outage(relay: RelayProcesses) -> None:
        wait_for(lambda: len(receiver.accepted()) > 10)
        receiver.stop()
        down_since.append(time.monotonic())

    with faulty_run(
        redis_server.url, chat_server, receiver_outage, receiver=receiver, chats=20, events_per_chat=10
    ) as outcome:
        # The sink goes down (10 failures in a row): its deliveries wait and a probe tests it every second;
        # 20 s is many probes and, for the deliveries scheduled before, several steps of the schedule.
        wait_for(lambda: int(redis_client.hget(keys.COUNTERS, "webhook_sink_down") or 0) >= 1)
        wait_for(lambda: time.monotonic() - down_since[0] > 20, timeout_s=30, step_s=0.5)
        receiver.start()
        assert_every_sink_once_in_order(redis_client, outcome, timeout_s=120)
