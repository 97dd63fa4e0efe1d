"""take_deliveries, delivery_done and delivery_failed: leases, fencing, sinks down, probed and gone."""

from __future__ import annotations

import json

from shared import keys
from shared.clock import now_ms
from tests.shared.scripts_relay import (
    SINK,
    RelayFactory,
    chat_with_events,
    event,
    text,
)

# webhook deliveries --------------------------------------------------------------------------------


def test_deliveries_are_taken_under_a_lease_and_fenced(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK)
    r = relay.redis
    chat_with_events(relay, count=2)
    at = now_ms()
    ((delivery_id, sink, sid, body, attempts),) = relay.take("lease-1", now=at, lease_ms=5000)
    assert (sink, sid, attempts) == (b"0", b"s1", b"0")
    assert [e["index"] for e in json.loads(body)["data"]["events"]] == [1, 2]
    assert r.zscore(keys.DELIVERIES, delivery_id) == at + 5000
    assert relay.take("lease-2", now=at + 1) == []  # leased
    assert relay.failed(delivery_id, "lease-2", at, str(at + 100)) == "fenced"
    assert relay.failed(delivery_id, "lease-1", at, str(at + 100)) == "retry"
    assert r.zscore(keys.DELIVERIES, delivery_id) == at + 100
    ((again, *_, attempts),) = relay.take("lease-3", now=at + 100)
    assert (again, attempts) == (delivery_id, b"1")
    assert relay.failed(delivery_id, "lease-3", at + 100, "") == "dead"  # the last attempt
    assert r.hget(keys.delivery(text(delivery_id)), "dead") == b"1"
    assert r.zscore(keys.DELIVERIES, delivery_id) is None
    assert r.get(keys.inflight(0, "s1")) == delivery_id  # later deliveries wait behind it
    assert relay.counter("webhook_dead_lettered") == 1


def test_delivery_done_starts_the_chats_next_delivery(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK)
    r = relay.redis
    claim = chat_with_events(relay, count=1)
    assert relay.commit(claim, "tok-a", 4, [event(2), event(3)]) == 1  # waits in the outbox
    first = text(r.get(keys.inflight(0, "s1")))
    assert relay.done(first) == 1
    assert not r.exists(keys.delivery(first))
    second = text(r.get(keys.inflight(0, "s1")))
    assert [e["index"] for e in relay.body(second)["data"]["events"]] == [2, 3]
    assert relay.done(second) == 0
    assert relay.done(second) == 0  # twice: nothing left, nothing broken
    assert not r.exists(keys.inflight(0, "s1")) and not r.exists(keys.DELIVERIES)


def test_a_sink_failing_in_a_row_is_down_probed_once_a_second_then_resumes_every_chat(
    make_relay: RelayFactory,
) -> None:
    relay = make_relay(**SINK)
    r = relay.redis
    chats = relay.settings.webhook_sink_down_after + 2
    for n in range(chats):
        chat_with_events(relay, sid=f"s{n}", count=1)
    at = now_ms() + 1
    rows = relay.take("lease-1", now=at, room=chats)
    assert len(rows) == chats
    outcomes = [relay.failed(row[0], "lease-1", at, str(at + 60_000)) for row in rows]
    # The WEBHOOK_SINK_DOWN_AFTER-th failure in a row: the sink is down.
    assert outcomes == ["retry"] * (relay.settings.webhook_sink_down_after - 1) + ["parked"] * 3
    assert r.hget(keys.sink(0), "down") is not None
    # Down: the deliveries due by their schedule wait; one probe a second, whatever its due time.
    assert [row[0] for row in relay.take("lease-2", now=at + 1)] == []
    (probe,) = relay.take("lease-2", now=at + 1000)
    assert relay.take("lease-3", now=at + 1500) == []
    assert relay.failed(probe[0], "lease-2", at + 1500, str(at + 90_000)) == "parked"  # no attempt used
    (probe,) = relay.take("lease-4", now=at + 2000)
    # The probe succeeds: every chat resumes at once.
    relay.done(text(probe[0]))
    assert not r.exists(keys.sink(0))
    rows = relay.take("lease-5", now=at + 2001, room=chats)
    assert len(rows) == chats - 1
    assert {row[2] for row in rows} == {f"s{n}".encode() for n in range(chats)} - {probe[2]}


def test_410_gone_disables_the_sink_until_an_operator_delivers_again(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK)
    chat_with_events(relay, sid="s1", count=1)
    chat_with_events(relay, sid="s2", count=1)
    at = now_ms() + 1
    first, second = relay.take("lease-1", now=at)
    assert relay.failed(first[0], "lease-1", at, str(at + 100), gone=True) == "gone"
    assert relay.redis.hget(keys.delivery(text(first[0])), "dead") == b"1"
    assert relay.failed(second[0], "lease-1", at, str(at + 100)) == "parked"  # nothing more is sent
    assert relay.take("lease-2", now=at + 5000) == []
    relay.done(text(first[0]))  # an operator requeued the dead letter and it was accepted
    ((resumed, *_),) = relay.take("lease-3", now=at + 5001)
    assert resumed == second[0]
