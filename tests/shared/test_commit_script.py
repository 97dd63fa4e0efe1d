"""commit: fencing, delivering, settling, ending a chat, and commits in chunks."""

from __future__ import annotations

import json

import pytest
import redis

from shared import keys
from shared.clock import now_ms
from tests.shared.scripts_relay import (
    DEVICE,
    SINK,
    TTLS,
    Relay,
    RelayFactory,
    assert_ttl,
    assert_unchanged,
    event,
    snapshot,
    text,
)

# commit --------------------------------------------------------------------------------------------


def test_commit_with_a_wrong_token_is_fenced_and_writes_nothing(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK)
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1", "tok-a")
    before = snapshot(relay.redis, ignore=[keys.COUNTERS])
    assert relay.commit(claim, "tok-b", 3, [event(1), event(2)], end_reason="chatEnded") == 0
    assert relay.commit(claim, "tok-b", 3, [event(1)], final=False) == 0
    assert_unchanged(before, snapshot(relay.redis, ignore=[keys.COUNTERS]))
    assert relay.counter("commit_fenced") == 2
    relay.redis.delete(keys.lease("s1"))  # expired
    assert relay.commit(claim, "tok-a", 3, [event(1)]) == 0
    assert relay.stream() == []


def test_commit_delivers_advances_and_settles(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK, **TTLS)
    r = relay.redis
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 4, [event(1), event(2), event(3, "Notice")]) == 1
    assert relay.stream() == [
        {"type": t, "sessionId": "s1", "index": str(i), "data": bytes(event(i, t).raw).decode()}
        for i, t in [(1, "Message"), (2, "Message"), (3, "Notice")]
    ]
    state = relay.session("s1")
    assert (state["cursor"], state["retries"]) == ("4", "0")
    assert relay.dirty("s1") is None  # nothing arrived meanwhile: done
    assert not r.exists(keys.lease("s1"))
    assert_ttl(r, keys.session("s1"), 1_000_000)
    assert_ttl(r, keys.credentials("s1"), 100_000)
    assert relay.counter("events_delivered") == 3
    (body,) = relay.bodies(0, "s1")
    assert body["type"] == "chat.events"
    assert body["data"]["nextPosition"] == 4
    assert [e["index"] for e in body["data"]["events"]] == [1, 2, 3]


def test_commit_sees_a_push_that_arrived_during_the_lease(relay: Relay) -> None:
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    relay.trigger("s1", 1)
    done = now_ms()
    assert relay.commit(claim, "tok-a", 2, [event(1)], again_at=done + 99_000, now=done) == 1
    assert relay.dirty("s1") == done  # the push wins over again_at: due at once


def test_commit_again_at_keeps_the_chat_due_later(relay: Relay) -> None:
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    later = now_ms() + 2000
    assert relay.commit(claim, "tok-a", 2, [event(1)], again_at=later, gap_since=123) == 1
    assert relay.dirty("s1") == later
    assert relay.session("s1")["gap_since"] == "123"
    claim = relay.claim_one("s1", now=later)
    assert relay.commit(claim, "tok-a", 3, [event(2)]) == 1
    assert "gap_since" not in relay.session("s1")
    assert relay.dirty("s1") is None


def test_commit_with_an_end_reason_ends_the_chat(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK, **TTLS)
    r = relay.redis
    relay.payload("s1", [event(1), event(3)])
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 3, [event(1), event(2)], end_reason="chatEnded", drops=[1]) == 1
    *events, ended = relay.stream()
    assert [e["index"] for e in events] == ["1", "2"]
    assert ended["type"] == "chat.ended" and ended["sessionId"] == "s1"
    assert json.loads(ended["data"]) == {"deviceId": DEVICE, "sessionId": "s1", "reason": "chatEnded"}
    for key in [keys.session("s1"), keys.credentials("s1"), keys.staged("s1"), keys.device(DEVICE)]:
        assert not r.exists(key), key
    assert r.get(keys.ended("s1")) == b"chatEnded"
    assert_ttl(r, keys.ended("s1"), 1_000_000)
    assert relay.dirty("s1") is None
    assert not r.exists(keys.lease("s1"))
    assert relay.counter("sessions_ended_chatEnded") == 1
    (events_body, *rest) = relay.bodies(0, "s1")
    assert [e["index"] for e in events_body["data"]["events"]] == [1, 2]
    (item,) = rest  # chat.ended waits behind the events in the outbox
    assert item["outbox"].startswith('X{"type":"chat.ended"')


def test_commit_drops_the_staged_events_it_delivered(relay: Relay) -> None:
    relay.payload("s1", [event(1), event(2), event(4)])
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 3, [event(1), event(2)], drops=[1, 2], again_at=now_ms() + 2000) == 1
    assert relay.redis.hkeys(keys.staged("s1")) == [b"4"]


def test_a_non_final_chunk_advances_the_cursor_and_keeps_the_claim(relay: Relay) -> None:
    r = relay.redis
    relay.trigger("s1", 1, app_dbid="trig-1")
    claim = relay.claim_one("s1")
    r.pexpire(keys.lease("s1"), 50)
    at = now_ms()
    args = relay.commit_args(claim, "tok-a", 3, [event(1), event(2)], final=False, alias="resp", now=at)
    assert int(relay.run("commit", args)) == 1
    assert relay.session("s1")["cursor"] == "3"
    assert relay.session("s1")["alias"] == "trig-1"  # settling is the final chunk's job
    assert r.get(keys.lease("s1")) == b"tok-a"
    assert relay.lease_ms - 200 < r.pttl(keys.lease("s1")) <= relay.lease_ms  # renewed
    assert relay.dirty("s1") == at + relay.lease_ms
    assert relay.claim("tok-b", now=at + 1) == []  # still claimed
    assert relay.commit(claim, "tok-a", 5, [event(3), event(4)], alias="resp") == 1
    assert [e["index"] for e in relay.stream()] == ["1", "2", "3", "4"]
    assert (relay.session("s1")["cursor"], relay.session("s1")["alias"]) == ("5", "resp")
    assert relay.dirty("s1") is None and not r.exists(keys.lease("s1"))


def test_twenty_thousand_events_in_chunks(make_relay: RelayFactory) -> None:
    relay = make_relay(STREAM_MAXLEN="30000", **SINK)
    r = relay.redis
    total = 20_000
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    events = [event(i) for i in range(1, total + 1)]
    assert len(list(relay.chunks(events))) == total // relay.settings.commit_chunk_events
    relay.commit_chunked(claim, "tok-a", total + 1, events)
    assert [int(e["index"]) for e in relay.stream()] == list(range(1, total + 1))
    assert relay.session("s1")["cursor"] == str(total + 1)
    assert relay.dirty("s1") is None and not r.exists(keys.lease("s1"))
    assert relay.delivery_events(0, "s1") == list(range(1, total + 1))
    # Delivering them all (as workers.webhooks.finish does) sends every event once, in order.
    delivered: list[int] = []
    while (inflight := r.get(keys.inflight(0, "s1"))) is not None:
        batch = relay.body(text(inflight))["data"]["events"]
        assert 0 < len(batch) <= relay.settings.webhook_batch_max
        delivered += [e["index"] for e in batch]
        relay.done(text(inflight))
    assert delivered == list(range(1, total + 1))
    assert not r.exists(keys.outbox(0, "s1")) and not r.exists(keys.DELIVERIES)


def test_an_unchunked_commit_of_9000_events_fails_without_writing(make_relay: RelayFactory) -> None:
    relay = make_relay(STREAM_MAXLEN="30000", **SINK)
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    before = snapshot(relay.redis)
    with pytest.raises(redis.ResponseError):
        relay.commit(claim, "tok-a", 9001, [event(i) for i in range(1, 9001)])
    assert_unchanged(before, snapshot(relay.redis))
