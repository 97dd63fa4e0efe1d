"""Run a reliable-mode workload through the real stack while a fault is injected, then check sinks."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from simulator.receiver import WebhookReceiver
from simulator.report import Report
from simulator.scenario import ScenarioConfig, run_scenario
from simulator.server import ChatServer
from tests.e2e.checks import assert_exactly_once_in_order, expected_end, expected_indexes, wait_all_done
from tests.processes import RelayProcesses, relay_env, relay_processes

API_TOKEN = "faults-api-token"
Fault = Callable[[RelayProcesses], None]


def workload(relay_url: str, **overrides: object) -> ScenarioConfig:
    config = ScenarioConfig(
        chats=30,
        events_per_chat=12,
        rate=200.0,
        mode="reliable",
        resend_delay_s=1.0,
        resend_attempts=60,
        duplicate_rate=0.05,
        flex_secure_key_rate=0.5,
        api_url=relay_url,
        api_token=API_TOKEN,
        settle_timeout_s=150.0,
        seed=11,
    )
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


@dataclass
class Outcome:
    report: Report
    receiver: WebhookReceiver
    fault_errors: list[BaseException]


@contextmanager
def faulty_run(
    redis_url: str,
    chat_server: ChatServer,
    fault: Fault,
    workers: int = 2,
    env: dict[str, str] | None = None,
    receiver: WebhookReceiver | None = None,
    **overrides: object,
) -> Iterator[Outcome]:
    """Run the workload with `fault(relay)` on a thread; yields once every push was answered."""
    receiver = receiver or WebhookReceiver()
    receiver.start()
    relay_vars = relay_env(
        REDIS_URL=redis_url,
        GMS_URL=chat_server.base_url,
        API_TOKEN=API_TOKEN,
        WEBHOOK_URL=receiver.url,
        WEBHOOK_RETRY_SCHEDULE_S=",".join(["1", "2"] + ["5"] * 40),
        **(env or {}),
    )
    errors: list[BaseException] = []
    try:
        with relay_processes(relay_vars, workers=workers) as relay:

            def inject() -> None:
                try:
                    fault(relay)
                except BaseException as exc:
                    errors.append(exc)

            injector = threading.Thread(target=inject)
            injector.start()
            report = run_scenario(
                f"{relay.base_url}/push", workload(relay.base_url, **overrides), server=chat_server
            )
            injector.join()
            yield Outcome(report, receiver, errors)
    finally:
        receiver.stop()


def assert_every_sink_once_in_order(client: redis.Redis, outcome: Outcome, timeout_s: float = 120.0) -> None:
    """The stream and the webhook receiver each got every event of every chat once, in order."""
    assert outcome.fault_errors == []
    report = outcome.report
    wait_all_done(client, report, timeout_s=timeout_s)
    assert_exactly_once_in_order(client, report)
    _wait_webhooks(outcome, timeout_s)
    seen: set[str] = set()
    delivered: dict[str, list[int]] = defaultdict(list)
    ended: dict[str, int] = defaultdict(int)
    ids_by_event: dict[tuple[str, int], set[str]] = defaultdict(set)
    for delivery in outcome.receiver.accepted():
        data = delivery.json["data"]
        for event in data.get("events", []):
            ids_by_event[(data["sessionId"], event["index"])].add(delivery.webhook_id)
        if delivery.webhook_id in seen:
            continue
        seen.add(delivery.webhook_id)
        if delivery.json["type"] == "chat.ended":
            ended[data["sessionId"]] += 1
        delivered[data.get("sessionId", "")] += [e["index"] for e in data.get("events", [])]
    assert all(len(ids) == 1 for ids in ids_by_event.values())
    for chat in report.chats:
        assert delivered[chat.session_id] == expected_indexes(chat), chat.session_id
        assert ended[chat.session_id] == (1 if expected_end(chat) else 0), chat.session_id
    assert report.totals.refreshes_cometd_key == 0


def _wait_webhooks(outcome: Outcome, timeout_s: float) -> None:
    from tests.processes import wait_for

    want = {c.session_id for c in outcome.report.chats if expected_end(c)}

    def all_ended() -> bool:
        got = {
            d.json["data"]["sessionId"] for d in outcome.receiver.accepted() if d.json["type"] == "chat.ended"
        }
        return want <= got

    wait_for(all_ended, timeout_s=timeout_s)
