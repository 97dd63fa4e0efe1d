"""SIGTERM under load: the ingress drains, workers finish their job, nothing accepted is lost."""

from __future__ import annotations

import signal
import threading

import pytest
import redis

from shared import keys
from shared.redis_server import RedisServer
from simulator.scenario import run_scenario
from simulator.server import ChatServer
from tests.e2e.checks import assert_exactly_once_in_order, wait_all_done
from tests.e2e.test_pipeline import API_TOKEN, scenario
from tests.processes import relay_env, relay_processes, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_sigterm_ingress_and_workers_under_load_then_restart(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    env = relay_env(REDIS_URL=redis_server.url, GMS_URL=chat_server.base_url, API_TOKEN=API_TOKEN)
    with relay_processes(env, workers=2) as relay:
        config = scenario(
            relay.base_url,
            chats=30,
            events_per_chat=15,
            rate=250.0,
            resend_delay_s=1.0,
            resend_attempts=20,
            duplicate_rate=0.0,
        )
        exit_codes: list[int] = []
        errors: list[BaseException] = []

        def restart_everything() -> None:
            try:
                wait_for(lambda: int(redis_client.hget(keys.COUNTERS, "events_delivered") or 0) > 60)
                relay.restart_ingress(signal.SIGTERM)
                for worker in list(relay.workers):
                    exit_codes.append(relay.stop_worker(worker, signal.SIGTERM))
                relay.add_worker()
                relay.add_worker()
            except BaseException as exc:
                errors.append(exc)

        restarter = threading.Thread(target=restart_everything)
        restarter.start()
        report = run_scenario(f"{relay.base_url}/push", config, server=chat_server)
        restarter.join()
        assert errors == []
        wait_all_done(redis_client, report, timeout_s=60)
    assert exit_codes == [0, 0]  # warm shutdown: each worker finished its job and exited cleanly
    assert report.totals.refreshes_cometd_key == 0
    assert_exactly_once_in_order(redis_client, report)
