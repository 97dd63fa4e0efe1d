"""ingest_payload and commit in payload mode: late events, gap bookkeeping, device-keyed chats."""

from __future__ import annotations

from shared import keys
from shared.clock import now_ms
from tests.shared.scripts_relay import (
    SINK,
    TTLS,
    Relay,
    RelayFactory,
    assert_ttl,
    assert_unchanged,
    event,
    snapshot,
)

# Payload mode: late events, gap bookkeeping, device-keyed chats (issue 11, item 3) ------------------


def test_payload_below_the_cursor_is_late_when_its_gap_was_skipped(relay: Relay) -> None:
    r = relay.redis
    relay.payload("s1", [event(1), event(3)])
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 4, [event(1), event(3)], drops=[1, 3]) == 1  # 2 given up on
    assert relay.session("s1")["skipped"] == "2-2"
    assert relay.counter("payload_gaps_skipped") == 1
    before = snapshot(r, ignore=[keys.COUNTERS])
    assert relay.payload("s1", [event(2)]) == "late"
    assert relay.payload("s1", [event(0)]) == "late"  # below 1: in no transcript GMS sends
    assert relay.payload("s1", [event(1)]) == "duplicate"  # delivered
    assert relay.payload("s1", [event(3)]) == "duplicate"
    assert_unchanged(before, snapshot(r, ignore=[keys.COUNTERS]))
    assert relay.counter("payload_late") == 2
    assert relay.payload("s1", [event(2), event(4)]) == "late"  # the new event is staged all the same
    assert r.hkeys(keys.staged("s1")) == [b"4"]
    assert relay.counter("payload_late") == 3


def test_a_late_payload_with_the_end_still_ends_the_chat(relay: Relay) -> None:
    relay.payload("s1", [event(1), event(3)])
    relay.commit(relay.claim_one("s1"), "tok-a", 4, [event(1), event(3)], drops=[1, 3])
    assert relay.payload("s1", [event(2)], ended=True) == "late"
    assert relay.session("s1")["end"] == "chatEnded"


def test_commit_counts_staged_events_below_the_cursor_as_late(relay: Relay) -> None:
    relay.payload("s1", [event(1)])
    relay.commit(relay.claim_one("s1"), "tok-a", 2, [event(1)], drops=[1])
    relay.payload("s1", [event(3)])
    claim = relay.claim_one("s1")
    assert relay.payload("s1", [event(2)]) == "queued"  # while the worker skips 2
    assert relay.commit(claim, "tok-a", 4, [event(3)], drops=[3]) == 1
    assert relay.session("s1")["skipped"] == "2-2"
    claim = relay.claim_one("s1")
    assert claim.staged == {2: bytes(event(2).raw)}
    assert relay.commit(claim, "tok-a", 4, drops=[2]) == 1  # the worker drops it: late
    assert relay.counter("payload_late") == 1
    assert relay.session("s1")["skipped"] == "2-2"
    assert not relay.redis.exists(keys.staged("s1"))


def test_commit_records_when_each_later_gap_was_first_seen(relay: Relay) -> None:
    relay.payload("s1", [event(1), event(3), event(5)])
    claim = relay.claim_one("s1")
    first = now_ms()
    assert relay.commit(claim, "tok-a", 2, [event(1)], drops=[1], gap_since=first, now=first) == 1
    assert (relay.session("s1")["gap_since"], relay.session("s1")["gaps"]) == (str(first), f"4:{first}")
    relay.payload("s1", [event(8)])
    claim = relay.claim_one("s1")
    later = first + 700
    assert relay.commit(claim, "tok-a", 2, gap_since=first, now=later) == 1
    assert relay.session("s1")["gaps"] == f"4:{first},6:{later}"  # the gap at 4 keeps its time
    relay.payload("s1", [event(4)])
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 2, again_at=first, gap_since=first, now=later + 1) == 1
    assert relay.session("s1")["gaps"] == f"6:{later}"  # 4 came: a gap at 6 only (5 is staged)
    claim = relay.claim_one("s1")
    events = [event(i) for i in (2, 3, 4, 5)]
    args = {"drops": [2, 3, 4, 5], "again_at": first, "gap_since": later, "now": later + 2}
    assert relay.commit(claim, "tok-a", 6, events, **args) == 1
    assert "gaps" not in relay.session("s1")  # the one at the cursor is in gap_since
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 9, [event(8)], drops=[8]) == 1
    assert not {"gap_since", "gaps"} & relay.session("s1").keys()
    assert relay.session("s1")["skipped"] == "6-7"


def test_a_reliable_commit_keeps_no_payload_bookkeeping(relay: Relay) -> None:
    relay.trigger("s1", 1)
    assert relay.commit(relay.claim_one("s1"), "tok-a", 9, [event(1), event(5)]) == 1
    assert not {"skipped", "gaps"} & relay.session("s1").keys()
    assert relay.counter("payload_gaps_skipped") == 0


def test_skipped_ranges_stay_bounded_and_only_err_towards_late(relay: Relay) -> None:
    relay.payload("s1", [event(1)])
    relay.commit(relay.claim_one("s1"), "tok-a", 2, [event(1)], drops=[1])
    for k in range(40):  # 40 gaps skipped: 2k + 2 missing, 2k + 3 delivered
        index = 2 * k + 3
        relay.payload("s1", [event(index)])
        relay.commit(relay.claim_one("s1"), "tok-a", index + 1, [event(index)], drops=[index])
    ranges = relay.session("s1")["skipped"].split(",")
    assert len(ranges) == 32 and ranges[0] == "2-18" and ranges[-1] == "80-80"
    assert relay.payload("s1", [event(4)]) == "late"
    assert relay.payload("s1", [event(5)]) == "late"  # delivered, inside the merged range
    assert relay.payload("s1", [event(79)]) == "duplicate"


def test_a_device_keyed_payload_chat_after_its_end_starts_a_new_chat(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK, **TTLS)
    r = relay.redis
    relay.payload("", [event(1, "ParticipantJoined"), event(2)], device="dev-p", ended=True)
    claim = relay.claim_one("dev-p")
    relay.commit(claim, "tok-a", 3, [event(1), event(2)], drops=[1, 2], end_reason="chatEnded")
    assert r.get(keys.ended("dev-p")) == b"chatEnded"
    assert relay.payload("", [event(3)], device="dev-p") == "ended"  # a late push of that chat
    at = now_ms()
    assert relay.payload("", [event(1, "ParticipantJoined")], device="dev-p", now=at) == "queued"
    new = f"dev-p~{at}"
    assert r.get(keys.device("dev-p")) == new.encode()
    assert r.hkeys(keys.staged(new)) == [b"1"]
    assert relay.payload("", [event(2)], device="dev-p") == "queued"  # the same new chat
    assert sorted(r.hkeys(keys.staged(new))) == [b"1", b"2"]
    for key in (keys.session(new), keys.staged(new), keys.device("dev-p"), keys.ended("dev-p")):
        assert_ttl(r, key, 1_000_000)
    # Two new chats in one millisecond still get two session ids.
    relay.commit(relay.claim_one(new), "tok-a", 3, [event(1), event(2)], drops=[1, 2], end_reason="chatEnded")
    assert relay.payload("", [event(1)], device="dev-p", now=at) == "queued"
    assert r.get(keys.device("dev-p")) == f"dev-p~{at + 1}".encode()


def test_a_device_keyed_participant_joined_starts_a_new_chat_only_after_an_end(relay: Relay) -> None:
    r = relay.redis
    relay.payload("", [event(1), event(2)], device="dev-p")
    relay.commit(relay.claim_one("dev-p"), "tok-a", 3, [event(1), event(2)], drops=[1, 2])
    assert relay.payload("", [event(3, "ParticipantJoined")], device="dev-p") == "queued"  # an agent joins
    assert r.hkeys(keys.staged("dev-p")) == [b"3"]
    relay.commit(relay.claim_one("dev-p"), "tok-a", 4, [event(3)], drops=[3], end_reason="chatEnded")
    at = now_ms()
    assert relay.payload("", [event(4, "ParticipantJoined")], device="dev-p", now=at) == "queued"
    assert r.get(keys.device("dev-p")) == f"dev-p~{at}".encode()


def test_a_device_keyed_index_1_again_starts_a_new_chat(relay: Relay) -> None:
    r = relay.redis
    relay.payload("", [event(2)], device="dev-p")  # no cursor yet: the chat waits for index 1
    assert relay.payload("", [event(1)], device="dev-p") == "queued"  # ... which fills it
    assert sorted(r.hkeys(keys.staged("dev-p"))) == [b"1", b"2"]
    relay.commit(relay.claim_one("dev-p"), "tok-a", 3, [event(1), event(2)], drops=[1, 2])
    at = now_ms()
    assert relay.payload("", [event(1)], device="dev-p", now=at) == "queued"  # the chat is past 1
    assert r.get(keys.device("dev-p")) == f"dev-p~{at}".encode()
    assert relay.payload("", [event(3)], device="dev-p") == "queued"  # follows the device to its new chat
    assert sorted(r.hkeys(keys.staged(f"dev-p~{at}"))) == [b"1", b"3"]
    assert relay.payload("s9", [event(1)], device="dev-p") == "queued"  # a chatId is always used as is
    assert r.hkeys(keys.staged("s9")) == [b"1"]
