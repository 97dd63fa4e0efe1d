"""ingest_trigger, ingest_payload and ingest_wakeup: triggers, payloads, wake-ups and alias ordering."""

from __future__ import annotations

import json
from datetime import UTC

import msgspec
from rq.job import Job
from rq.serializers import JSONSerializer

from shared import keys
from shared.clock import now_ms
from shared.models import Event
from tests.shared.scripts_relay import (
    DEVICE,
    Relay,
    assert_ttl,
    assert_unchanged,
    drain_jobs,
    event,
    snapshot,
)

# ingest: triggers ----------------------------------------------------------------------------------


def test_trigger_stores_state_and_credentials_and_marks_the_chat_dirty(relay: Relay) -> None:
    at = now_ms()
    assert relay.trigger("s1", 1, user="u-1", key="k-1", app_dbid="app-7", now=at) == "queued"
    r = relay.redis
    assert relay.session("s1") == {
        "deviceId": DEVICE,
        "alias": "app-7",
        "alias_key": "2",
        "aliases": "app-7",
        "gen": "1",
    }
    assert r.hgetall(keys.credentials("s1")) == {b"userId": b"u-1", b"secureKey": b"k-1"}
    assert r.get(keys.device(DEVICE)) == b"s1"
    assert_ttl(r, keys.credentials("s1"), 100_000)
    assert_ttl(r, keys.session("s1"), 1_000_000)
    assert_ttl(r, keys.device(DEVICE), 1_000_000)
    assert relay.dirty("s1") == at


def test_trigger_without_secure_key_keeps_what_credentials_there_are(relay: Relay) -> None:
    assert relay.trigger("s1", 1, user="u-1", key="") == "queued"
    assert relay.redis.hgetall(keys.credentials("s1")) == {b"userId": b"u-1"}
    assert relay.trigger("s2", 1, user="", key="") == "queued"
    assert not relay.redis.exists(keys.credentials("s2"))


def test_one_drain_job_per_burst(relay: Relay) -> None:
    r = relay.redis
    at = now_ms()
    for n, sid in enumerate(["s1", "s2", "s1"]):
        assert relay.trigger(sid, 1, now=at, job=f"drain-{n}") == "queued"
    assert drain_jobs(r) == ["drain-0"]
    assert r.get(keys.DRAIN_QUEUED) == b"drain-0"
    assert 0 < r.pttl(keys.DRAIN_QUEUED) <= relay.settings.drain_marker_ttl_ms
    assert r.smembers(keys.RQ_QUEUES) == {keys.rq_queue(keys.DRAIN_QUEUE).encode()}
    assert not r.exists("rq:job:drain-1") and not r.exists("rq:job:drain-2")
    # The hash is RQ's own job format: RQ reads it back.
    job = Job.fetch("drain-0", connection=r, serializer=JSONSerializer)
    assert job.func_name == keys.DRAIN_JOB
    assert job.get_status() == "queued"
    assert job.origin == keys.DRAIN_QUEUE
    assert job.result_ttl == 0
    assert (
        job.enqueued_at is not None and abs(job.enqueued_at.replace(tzinfo=UTC).timestamp() * 1000 - at) < 1
    )
    # A drain clears the marker as it starts: the next push enqueues the next drain.
    r.delete(keys.DRAIN_QUEUED)
    assert relay.trigger("s1", 1, job="drain-3") == "queued"
    assert drain_jobs(r) == ["drain-0", "drain-3"]
    assert int(relay.scripts["kick"](job_id="drain-4", now_ms=now_ms())) == 0
    r.delete(keys.DRAIN_QUEUED)
    assert int(relay.scripts["kick"](job_id="drain-5", now_ms=now_ms())) == 1
    assert drain_jobs(r) == ["drain-0", "drain-3", "drain-5"]


def test_repeated_trigger_is_queued_and_bumps_gen(relay: Relay) -> None:
    at = now_ms()
    assert relay.trigger("s1", 1, 0, now=at) == "queued"
    assert relay.trigger("s1", 1, 0, now=at + 5) == "queued"  # an exact repeat may announce a new event
    assert relay.trigger("s1", 1, 1, now=at + 9) == "queued"  # a resend
    assert relay.session("s1")["gen"] == "3"
    assert relay.dirty("s1") == at  # the oldest unserved push sets when the chat is due


def test_repeated_trigger_during_a_lease_is_queued_and_bumps_gen(relay: Relay) -> None:
    at = now_ms()
    relay.trigger("s1", 1, now=at)
    claim = relay.claim_one("s1", now=at)
    assert relay.trigger("s1", 1, now=at + 1) == "queued"
    assert relay.session("s1")["gen"] == str(int(claim.gen) + 1)
    assert relay.dirty("s1") == at + relay.lease_ms  # the claim's mark stays (NX) ...
    assert relay.redis.get(keys.lease("s1")) == b"tok-a"  # ... and so does the lease
    # ... and the commit sees `gen` moved: the chat is due again at once.
    done = now_ms()
    assert relay.commit(claim, "tok-a", 1, now=done) == 1
    assert relay.dirty("s1") == done


def test_repeated_trigger_after_a_commit_that_found_nothing_new_is_queued(relay: Relay) -> None:
    relay.trigger("s1", 3)
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 3) == 1  # Refresh from 3 returned nothing; cursor 3 == position
    assert relay.dirty("s1") is None
    gen = relay.session("s1")["gen"]
    at = now_ms()
    assert relay.trigger("s1", 3, 0, now=at) == "queued"
    assert relay.session("s1")["gen"] == str(int(gen) + 1)
    assert relay.dirty("s1") == at


def test_trigger_below_the_cursor_is_covered_and_bumps_nothing(relay: Relay) -> None:
    relay.trigger("s1", 1, app_dbid="a1")
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 5, [event(i) for i in range(1, 5)]) == 1
    relay.redis.delete(keys.DRAIN_QUEUED)
    before = relay.session("s1")
    jobs = drain_jobs(relay.redis)
    assert relay.trigger("s1", 4, app_dbid="a-late") == "covered"
    assert relay.session("s1") == before  # no gen bump, alias unchanged
    assert relay.dirty("s1") is None
    assert drain_jobs(relay.redis) == jobs
    assert not relay.redis.exists(keys.DRAIN_QUEUED)
    assert_ttl(relay.redis, keys.session("s1"), 1_000_000)  # a covered push still keeps the chat alive


def test_position_minus_one_marks_the_participant_removed(relay: Relay) -> None:
    relay.trigger("s1", 2)
    assert relay.trigger("s1", -1) == "queued"
    state = relay.session("s1")
    assert state["end"] == "removed"
    assert state["gen"] == "2"
    assert relay.dirty("s1") is not None


def test_pushes_for_an_ended_chat_are_answered_ended_and_write_nothing(relay: Relay) -> None:
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 2, [event(1)], end_reason="chatEnded") == 1
    relay.redis.delete(keys.DRAIN_QUEUED)
    before = snapshot(relay.redis)
    assert relay.trigger("s1", 2, 0, user="u-new", key="k-new") == "ended"
    assert relay.trigger("s1", -1) == "ended"
    assert relay.payload("s1", [event(2)]) == "ended"
    assert relay.register("s1") == "ended"
    assert_unchanged(before, snapshot(relay.redis))


def test_push_without_a_known_chat_is_a_wakeup(relay: Relay) -> None:
    r = relay.redis
    assert relay.trigger("", 1, device="dev-x") == "wakeup"  # a trigger without session-id
    assert relay.wakeup("dev-y", "hi") == "wakeup"
    waiting = [json.loads(w) for w in r.lrange(keys.WAKEUPS, 0, -1)]
    assert waiting == [
        {"deviceId": "dev-x", "text": "PUSH-NOTIFICATION"},
        {"deviceId": "dev-y", "text": "hi"},
    ]
    assert_ttl(r, keys.WAKEUPS, 1_000_000)
    assert len(drain_jobs(r)) == 1
    assert not r.exists(keys.DIRTY)


def test_wakeup_for_a_device_in_a_live_chat_refreshes_that_chat(relay: Relay) -> None:
    relay.trigger("s1", 1)
    assert relay.wakeup(DEVICE) == "queued"
    assert relay.session("s1")["gen"] == "2"
    assert not relay.redis.exists(keys.WAKEUPS)


# ingest: payloads ----------------------------------------------------------------------------------


def test_payload_events_are_staged_and_repeats_are_duplicates(relay: Relay) -> None:
    r = relay.redis
    assert relay.payload("s1", [event(1), event(2)]) == "queued"
    assert r.hgetall(keys.staged("s1")) == {b"1": bytes(event(1).raw), b"2": bytes(event(2).raw)}
    assert_ttl(r, keys.staged("s1"), 1_000_000)
    assert relay.session("s1") == {"deviceId": DEVICE, "mode": "payload", "gen": "1"}
    before = snapshot(r)
    assert relay.payload("s1", [event(2), event(1)]) == "duplicate"
    assert_unchanged(before, snapshot(r))
    replaced = Event(2, "Message", msgspec.Raw(b'{"index":2,"text":"other"}'))
    assert relay.payload("s1", [replaced, event(3)]) == "queued"
    assert r.hget(keys.staged("s1"), "2") == bytes(event(2).raw)  # the first copy of an index stays
    assert r.hget(keys.staged("s1"), "3") == bytes(event(3).raw)
    assert relay.session("s1")["gen"] == "2"


def test_payload_below_the_cursor_is_a_duplicate_unless_it_ends_the_chat(relay: Relay) -> None:
    relay.payload("s1", [event(1)])
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 2, [event(1)], drops=[1]) == 1
    assert not relay.redis.exists(keys.staged("s1"))
    assert relay.payload("s1", [event(1)]) == "duplicate"
    assert relay.payload("s1", [], ended=True) == "queued"
    assert relay.session("s1")["end"] == "chatEnded"


def test_payload_without_session_id_is_keyed_by_device(relay: Relay) -> None:
    assert relay.payload("", [event(1)], device="dev-p") == "queued"
    assert relay.redis.hkeys(keys.staged("dev-p")) == [b"1"]


# ingest: aliases (take_alias in core.lua) ---------------------------------------------------------


def test_registration_alias_never_replaces_a_trigger_alias(relay: Relay) -> None:
    relay.register("s1", alias="reg-1")
    assert (relay.session("s1")["alias"], relay.session("s1")["alias_key"]) == ("reg-1", "-1")
    relay.trigger("s1", 0, app_dbid="trig-0")  # key 0
    assert relay.session("s1")["alias"] == "trig-0"
    relay.register("s1", alias="reg-2")
    assert relay.session("s1")["alias"] == "trig-0"


def test_late_trigger_never_brings_back_an_older_alias(relay: Relay) -> None:
    assert relay.trigger("s1", 4, app_dbid="alias-4") == "queued"
    assert relay.trigger("s1", 2, app_dbid="alias-2") == "queued"  # arrives late, still not covered
    assert relay.session("s1")["alias"] == "alias-4"
    assert relay.session("s1")["alias_key"] == "8"
    assert relay.trigger("s1", 4, app_dbid="alias-4b") == "queued"  # same position: same key, taken
    assert relay.session("s1")["alias"] == "alias-4b"


def test_response_beats_a_trigger_below_its_next_position(relay: Relay) -> None:
    relay.trigger("s1", 3, app_dbid="trig-3")  # key 6
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 4, [event(3)], alias="resp-4") == 1  # key 9
    assert (relay.session("s1")["alias"], relay.session("s1")["alias_key"]) == ("resp-4", "9")
    assert relay.session("s1")["aliases"] == "resp-4\ntrig-3"  # the candidates, newest first


def test_trigger_past_the_next_position_beats_the_response(relay: Relay) -> None:
    relay.trigger("s1", 1, app_dbid="trig-1")
    claim = relay.claim_one("s1")
    assert relay.trigger("s1", 5, app_dbid="trig-5") == "queued"  # computed after the Refresh: key 10
    assert relay.commit(claim, "tok-a", 4, [event(i) for i in (1, 2, 3)], alias="resp-4") == 1  # key 9
    assert relay.session("s1")["alias"] == "trig-5"
    # And in the other order: the response first, then a trigger with p == n.
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 6, [event(4), event(5)], alias="resp-6") == 1  # key 13
    assert relay.session("s1")["alias"] == "resp-6"
    # A trigger at the response's nextPosition may have been sent before that Refresh was processed
    # (another client had fetched everything): the response wins; its alias stays a candidate.
    assert relay.trigger("s1", 6, app_dbid="trig-6") == "queued"  # key 12
    assert relay.session("s1")["alias"] == "resp-6"
    assert relay.session("s1")["aliases"].split("\n")[:2] == ["trig-6", "resp-6"]
    assert relay.trigger("s1", 7, app_dbid="trig-7") == "queued"  # key 14
    assert relay.session("s1")["alias"] == "trig-7"


def test_removal_trigger_only_gives_an_alias_when_there_is_none(relay: Relay) -> None:
    relay.trigger("s1", -1, app_dbid="first")
    assert (relay.session("s1")["alias"], relay.session("s1")["alias_key"]) == ("first", "0")
    relay.trigger("s2", 5, app_dbid="trig-5")
    relay.trigger("s2", -1, app_dbid="removal")
    assert relay.session("s2")["alias"] == "trig-5"
