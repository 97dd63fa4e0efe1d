"""The Redis primary lost under load: a real primary, replica and three Sentinels (tests/failover/
harness.py), the real relay following them (REDIS_SENTINELS), the simulator's reliable, payload and
wake-up chats; the primary SIGKILLed mid-traffic, then started again (it returns as a replica).

Two ingress processes share the workers and the failover, each with its own chats: one answers at
INGRESS_ACK=replicated, one at stored. What each level promises, and what the test holds it to:
- replicated: a 200 means a replica holds the push, and Sentinel promotes a replica, so nothing
  acknowledged is lost: every sink gets every acknowledged event once, in order.
- stored: a 200 means the primary holds it; a crash loses what had not reached the replica yet
  (on loopback, rarely anything). Reliable chats come out whole through Chat Server's resends; a lost
  payload push is gone. The test prints what was lost and holds the rest: nothing repeated or
  reordered, and everything the new primary acknowledged delivered.
- Both answer 200 again within 5 s of the promotion, and the workers resume with no restart.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from shared import keys
from simulator.receiver import WebhookReceiver
from simulator.report import Report
from simulator.scenario import run_scenario
from simulator.server import ChatServer
from tests.e2e.checks import stream
from tests.failover.harness import Failover, Promotion, failover_cluster, first_200_within
from tests.failover.sinks import Tally, tally, wait_settled
from tests.faults.harness import API_TOKEN, workload
from tests.processes import RelayProcesses, relay_env, relay_processes, wait_for

pytestmark = [pytest.mark.failover, pytest.mark.timeout(180)]

RECOVERY_DEADLINE_S = 5.0  # each ingress answers 200 again within this of the promotion
# Per ingress: mixed chats (reliable, payload and wake-up in turn), ~10 s of traffic at 60 events/s.
# The kill comes after ~1-2 s, the promotion ~2 s later, and half the traffic follows it.
TRAFFIC = {"mode": "mixed", "chats": 24, "events_per_chat": 25, "rate": 60.0}
ACKS = ("replicated", "stored")


def delivered(client: redis.Redis) -> int:
    return int(client.hget(keys.COUNTERS, "events_delivered") or 0)


@dataclass
class Seen:
    """What the fault thread observed, for the assertions after the run."""

    promotion: Promotion | None = None
    recovered_s: dict[str, float] = field(default_factory=dict)  # promotion -> first 200, per ack
    delivered_at_promotion: int = 0
    rejoined_s: float = -1.0  # old primary started -> replicating the new one
    errors: list[BaseException] = field(default_factory=list)


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[Failover]:
    """Two replicas: after the failover the new primary still has one, which `replicated` needs to
    answer 200 (see test_one_replica_replicated_waits_for_the_old_primary)."""
    with failover_cluster(tmp_path, replicas=2) as cluster:
        yield cluster


def crash(ha: Failover, ingresses: dict[str, RelayProcesses], seen: Seen) -> None:
    """SIGKILL the primary once ~60 events went through; wait for the promotion; probe each ingress
    until it answers 200 (at most RECOVERY_DEADLINE_S); restart the old primary."""
    try:
        with ha.client() as client:
            wait_for(lambda: delivered(client) > 60)
        old = ha.kill_primary()
        seen.promotion = promotion = ha.wait_for_promotion(old)
        for ack, relay in ingresses.items():
            seen.recovered_s[ack] = first_200_within(
                f"{relay.base_url}/push", RECOVERY_DEADLINE_S, promotion.promoted_at
            )
        with ha.client() as client:
            seen.delivered_at_promotion = delivered(client)
        seen.rejoined_s = ha.restart_as_replica(old)
    except BaseException as exc:
        seen.errors.append(exc)


def test_the_primary_killed_under_load(ha: Failover, chat_server: ChatServer) -> None:
    receiver = WebhookReceiver()
    receiver.start()
    env = ha.env(
        GMS_URL=chat_server.base_url,
        API_TOKEN=API_TOKEN,
        WEBHOOK_URL=receiver.url,
        WEBHOOK_RETRY_SCHEDULE_S=",".join(["0.5", "1", "2"] + ["5"] * 40),
        LOG_LEVEL="ERROR",  # not each payload gap skipped (a customer join is never pushed)
    )
    seen = Seen()
    reports: dict[str, Report] = {}
    try:
        with (
            relay_processes(relay_env(**env, INGRESS_ACK="replicated"), workers=2) as relay,
            relay_processes(relay_env(**env, INGRESS_ACK="stored"), workers=0) as stored,
        ):
            ingresses = {"replicated": relay, "stored": stored}
            workers = [w.process.pid for w in relay.workers]

            def drive(ack: str, seed: int) -> None:
                base = ingresses[ack].base_url
                config = workload(base, seed=seed, **TRAFFIC)
                reports[ack] = run_scenario(f"{base}/push", config, server=chat_server)

            threads = [threading.Thread(target=crash, args=(ha, ingresses, seen))]
            threads += [threading.Thread(target=drive, args=(ack, 11 + n)) for n, ack in enumerate(ACKS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert seen.errors == [] and set(reports) == set(ACKS)
            with ha.client() as client:
                for report in reports.values():
                    wait_settled(client, report)
                counted = {ack: tally(client, reports[ack], receiver) for ack in ACKS}
                still_delivering = delivered(client) > seen.delivered_at_promotion
            assert [w.process.pid for w in relay.workers] == workers
            assert all(w.alive() for w in relay.workers)
            # Checked: now stop them at once. Through Sentinel a worker's warm shutdown (RQ's
            # register_death) can block on a connection for the stack's whole stop timeout.
            for worker in list(relay.workers):
                relay.stop_worker(worker, signal.SIGKILL)
    finally:
        receiver.stop()

    assert seen.promotion is not None
    print(
        f"\nprimary SIGKILLed: promoted {seen.promotion.failover_s:.2f} s later; 200 again "
        + ", ".join(f"{ack} {s:.2f} s" for ack, s in seen.recovered_s.items())
        + f" after the promotion; old primary replicating {seen.rejoined_s:.1f} s after its restart"
    )
    for ack in ACKS:
        print(f"INGRESS_ACK={ack}: {counted[ack].line()}")
    # Both levels: back within the deadline (first_200_within raised otherwise), the same workers
    # delivering after the promotion, the old primary back as a replica of the new one.
    assert all(0 <= s <= RECOVERY_DEADLINE_S for s in seen.recovered_s.values())
    assert still_delivering
    assert seen.rejoined_s >= 0 and ha.primary() is seen.promotion.new
    for ack in ACKS:
        assert_no_repeats_nor_reorder(counted[ack])
        assert counted[ack].reliable_incomplete == 0  # resends recover what `stored` lost
    # replicated: nothing acknowledged is lost, anywhere.
    replicated = counted["replicated"]
    assert replicated.payload_events_lost == replicated.wakeups_lost == replicated.ends_wrong == 0
    assert replicated.webhook_missing == 0
    # stored: whatever the new primary acknowledged is delivered (what the old one had acknowledged
    # and not yet passed on is what `stored` may lose: printed above).
    assert_acked_after_promotion_delivered(ha, reports["stored"], seen.promotion)


def assert_no_repeats_nor_reorder(counted: Tally) -> None:
    """A commit reaches the replica whole or not at all, so a failover never repeats an event in the
    stream nor reorders one anywhere; a webhook delivery is repeated only under its own id."""
    assert counted.stream_repeats == counted.stream_out_of_order == 0
    assert counted.webhook_repeats == counted.webhook_out_of_order == 0


def assert_acked_after_promotion_delivered(ha: Failover, report: Report, promotion: Promotion) -> None:
    """Every payload push sent after the kill and answered 200 was stored by the new primary (the old
    one was dead): its events are in the stream."""
    late = [
        (chat, push)
        for chat in report.chats
        if chat.mode == "payload"
        for push in chat.push_log
        if push.acked and push.at > promotion.fault_at
    ]
    assert late, "no payload push was acknowledged after the failover"
    with ha.client() as client:
        for chat, push in late:
            got = {int(e["index"]) for e in stream(client, chat.device_id) if "index" in e}
            assert set(push.indexes) <= got, (chat.session_id, push.indexes)
