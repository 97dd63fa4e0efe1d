"""The Lua scripts of shared/lua, call by call against a real Redis (rq's tests/test_scripts.py is the
model): each test calls a script with the ARGV its Python caller builds (ingress/store.py,
workers/drain.py, workers/commit.py, workers/webhooks.py) and asserts what it returned and what it left
in Redis."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC
from typing import Any

import msgspec
import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from shared import keys
from shared.models import Event
from shared.scripts import SINK_DOWN_AFTER, ScriptSources
from shared.settings import Settings
from tests.conftest import SettingsFactory
from workers.claims import Claim
from workers.commit import CHUNK_EVENTS, _chunks

DEVICE = "dev-1"
SINK = {"WEBHOOK_URL": "http://127.0.0.1:9/hook"}
TWO_SINKS = {"WEBHOOK_URL": "http://127.0.0.1:9/a,http://127.0.0.1:9/b"}
# Two lifetimes that tell credentials and chat state apart in PTTL checks.
TTLS = {"SESSION_IDLE_TTL_S": "100", "CHAT_STATE_TTL_S": "1000"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event(index: int, kind: str = "Message") -> Event:
    raw = json.dumps({"index": index, "type": kind, "text": f"m{index}"}, separators=(",", ":"))
    return Event(index, kind, msgspec.Raw(raw.encode()))


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Relay:
    """The scripts built from one Settings, with argument builders that mirror their Python callers."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.scripts = ScriptSources.build(settings).register(client)
        self._ids = itertools.count()

    @property
    def lease_ms(self) -> int:
        return self.settings.lease_ttl_ms

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def run(self, script: str, args: Sequence[str | bytes]) -> Any:
        return self.scripts[script](args=list(args))

    # ingress/store.py
    def trigger_args(
        self,
        sid: str,
        position: int | str,
        attempt: int | str = 0,
        *,
        device: str = DEVICE,
        user: str = "user-1",
        key: str = "key-1",
        app_dbid: str = "",
        now: int | str | None = None,
        job: str | None = None,
    ) -> list[str | bytes]:
        at = now_ms() if now is None else now
        job_id = job or self.new_id("drain")
        return ["t", device, sid, str(at), job_id, str(position), str(attempt), user, key, app_dbid]

    def trigger(self, sid: str, position: int | str, attempt: int | str = 0, **kw: Any) -> str:
        return text(self.run("ingest", self.trigger_args(sid, position, attempt, **kw)))

    def payload(
        self,
        sid: str,
        events: Iterable[Event],
        *,
        ended: bool = False,
        alias: str = "",
        device: str = DEVICE,
        now: int | None = None,
    ) -> str:
        args: list[str | bytes] = ["p", device, sid, str(now or now_ms()), self.new_id("drain")]
        args += ["1" if ended else "", alias]
        for e in events:
            args += [str(e.index), bytes(e.raw)]
        return text(self.run("ingest", args))

    def wakeup(self, device: str, note: str = "hello", now: int | None = None) -> str:
        body = json.dumps({"deviceId": device, "text": note}).encode()
        return text(self.run("ingest", ["w", device, "", str(now or now_ms()), self.new_id("drain"), body]))

    def register(
        self,
        sid: str,
        *,
        device: str = DEVICE,
        user: str = "user-1",
        key: str = "key-1",
        alias: str = "",
        service: str = "",
        now: int | None = None,
    ) -> str:
        args = [sid, device, user, key, alias, service, str(now or now_ms()), self.new_id("drain")]
        return text(self.run("register", args))

    def forget(self, sid: str) -> int:
        return int(self.run("forget", [sid]))

    # workers/drain.py
    def claim(self, token: str = "tok-a", now: int | None = None, limit: int = 16) -> list[Claim]:
        rows = self.run("claim", [str(now or now_ms()), token, str(limit), self.new_id("wk")])
        return [Claim.parse(row) for row in rows]

    def claim_one(self, sid: str, token: str = "tok-a", now: int | None = None) -> Claim:
        claims = {c.session_id: c for c in self.claim(token, now)}
        return claims[sid]

    # workers/commit.py
    def commit_args(
        self,
        claim: Claim,
        token: str,
        cursor: int | str,
        events: Sequence[Event] = (),
        *,
        final: bool = True,
        alias: str = "",
        end_reason: str = "",
        again_at: int | None = None,
        gap_since: int | None = None,
        drops: Sequence[int] = (),
        now: int | str | None = None,
        gen: str | None = None,
    ) -> list[str | bytes]:
        args: list[str | bytes] = [
            claim.session_id,
            token,
            str(now_ms() if now is None else now),
            claim.device_id or "",
            str(cursor),
            "1" if final else "",
            alias if final else "",
            end_reason if final else "",
            claim.gen if gen is None else gen,
            "" if again_at is None or not final else str(again_at),
            "" if gap_since is None or not final else str(gap_since),
            self.new_id("wh"),
            str(len(events)),
        ]
        for e in events:
            args += [str(e.index), e.type, bytes(e.raw)]
        args += [str(index) for index in drops]
        return args

    def commit(self, claim: Claim, token: str, cursor: int, events: Sequence[Event] = (), **kw: Any) -> int:
        return int(self.run("commit", self.commit_args(claim, token, cursor, events, **kw)))

    def commit_chunked(self, claim: Claim, token: str, cursor: int, events: list[Event]) -> None:
        """What workers.commit.commit sends for an outcome (without staged drops): one fenced call per
        chunk, every chunk but the last moving the cursor just past its events."""
        chunks = list(_chunks(events))
        for number, chunk in enumerate(chunks):
            final = number == len(chunks) - 1
            at = cursor if final else chunk[-1].index + 1
            assert self.commit(claim, token, at, chunk, final=final) == 1

    def release(
        self, claim: Claim, token: str, how: str, at: int | str = 0, now: int | None = None, alias: str = ""
    ) -> str:
        args = [claim.session_id, token, how, str(at), claim.gen, str(now or now_ms()), self.new_id("wh")]
        return text(self.run("release", [*args, alias]))

    # workers/webhooks.py
    def take(
        self, token: str = "lease-1", now: int | None = None, lease_ms: int = 10_000, room: int = 8
    ) -> list[Any]:
        room_args = [str(room)] * len(self.settings.webhook_urls)
        return list(self.run("take_deliveries", [str(now or now_ms()), str(lease_ms), token, *room_args]))

    def failed(self, delivery_id: Any, token: str, now: int, retry_at: str, gone: bool = False) -> str:
        args = [delivery_id, token, str(now), retry_at, "1" if gone else ""]
        return text(self.run("delivery_failed", args))

    def done(self, delivery_id: str) -> int:
        return int(self.run("delivery_done", [delivery_id, self.new_id("wh"), str(now_ms())]))

    # Reading Redis
    def session(self, sid: str) -> dict[str, str]:
        return {text(k): text(v) for k, v in self.redis.hgetall(keys.session(sid)).items()}

    def stream(self, device: str = DEVICE) -> list[dict[str, str]]:
        entries = self.redis.xrange(keys.stream(device)) or []
        return [{text(k): text(v) for k, v in (fields or {}).items()} for _, fields in entries]

    def counter(self, name: str) -> int:
        return int(self.redis.hget(keys.COUNTERS, name) or 0)

    def dirty(self, sid: str) -> float | None:
        score = self.redis.zscore(keys.DIRTY, sid)
        return None if score is None else float(score)

    def body(self, delivery_id: str) -> dict[str, Any]:
        raw = self.redis.hget(keys.delivery(delivery_id), "body")
        assert raw is not None, delivery_id
        return dict(json.loads(raw))

    def outbox(self, sink: int, sid: str) -> list[str]:
        return [text(item) for item in self.redis.lrange(keys.outbox(sink, sid), 0, -1)]

    def bodies(self, sink: int, sid: str) -> list[dict[str, Any]]:
        """Every webhook body waiting for one sink and chat: the in-flight delivery, then the outbox."""
        found: list[dict[str, Any]] = []
        inflight = self.redis.get(keys.inflight(sink, sid))
        if inflight is not None:
            found.append(self.body(text(inflight)))
        found += [{"outbox": item} for item in self.outbox(sink, sid)]
        return found

    def delivery_events(self, sink: int, sid: str) -> list[int]:
        """Event indexes waiting for a sink, in order: the in-flight batch, then the outbox items."""
        indexes: list[int] = []
        inflight = self.redis.get(keys.inflight(sink, sid))
        if inflight is not None:
            indexes += [e["index"] for e in self.body(text(inflight))["data"]["events"]]
        for item in self.outbox(sink, sid):
            assert item.startswith("E")
            indexes.append(json.loads(item.split("\t", 2)[2])["index"])
        return indexes


RelayFactory = Callable[..., Relay]


@pytest.fixture
def make_relay(make_settings: SettingsFactory, redis_client: redis.Redis) -> RelayFactory:
    def factory(**env: str) -> Relay:
        return Relay(make_settings(**env), redis_client)

    return factory


@pytest.fixture
def relay(make_relay: RelayFactory) -> Relay:
    return make_relay(**TTLS)


Snapshot = dict[str, tuple[Any, int]]


def snapshot(client: redis.Redis, *, ignore: Iterable[str] = ()) -> Snapshot:
    """Every key's serialised value and PTTL."""
    skip = set(ignore)
    return {text(k): (client.dump(k), client.pttl(k)) for k in client.keys("*") if text(k) not in skip}


def _renewed(before_ms: int, after_ms: int) -> bool:
    return after_ms != -1 if before_ms == -1 else after_ms > before_ms


def assert_unchanged(before: Snapshot, after: Snapshot) -> None:
    """Same keys, same values, and no TTL renewed (a PTTL only ever runs down)."""
    both = sorted(before.keys() & after.keys())
    diff = {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": [k for k in both if after[k][0] != before[k][0]],
        "ttl renewed": [k for k in both if _renewed(before[k][1], after[k][1])],
    }
    assert diff == {"added": [], "removed": [], "changed": [], "ttl renewed": []}


def assert_ttl(client: redis.Redis, key: str, ttl_ms: int) -> None:
    """The key was (re)written with a TTL of `ttl_ms` within the last few seconds."""
    assert ttl_ms - 5000 < client.pttl(key) <= ttl_ms, key


def drain_jobs(client: redis.Redis) -> list[str]:
    return [text(j) for j in client.lrange(keys.rq_queue(keys.DRAIN_QUEUE), 0, -1)]


def chat_with_events(relay: Relay, sid: str = "s1", count: int = 3) -> Claim:
    """A chat claimed, committed with events 1..count, and claimed again after a new trigger."""
    relay.trigger(sid, 0)
    first = relay.claim_one(sid)
    assert relay.commit(first, "tok-a", count + 1, [event(i) for i in range(1, count + 1)]) == 1
    relay.trigger(sid, count + 1)
    return relay.claim_one(sid)


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
    assert 0 < r.pttl(keys.DRAIN_QUEUED) <= keys.DRAIN_MARKER_TTL_MS
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
    assert int(relay.run("kick", ["drain-4", str(now_ms())])) == 0
    r.delete(keys.DRAIN_QUEUED)
    assert int(relay.run("kick", ["drain-5", str(now_ms())])) == 1
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


# ingest: malformed arguments -----------------------------------------------------------------------

_T = ["t", DEVICE, "s1", "1700000000000", "job-x", "3", "0", "u", "k", "a"]
_P = ["p", DEVICE, "s1", "1700000000000", "job-x", "", ""]
_W = ["w", DEVICE, "", "1700000000000", "job-x", '{"deviceId":"dev-1"}']
MALFORMED_INGEST = {
    "trigger-too-few": _T[:-1],
    "trigger-too-many": [*_T, "x"],
    "trigger-position-not-a-number": [*_T[:5], "three", *_T[6:]],
    "trigger-position-empty": [*_T[:5], "", *_T[6:]],
    "trigger-attempt-not-a-number": [*_T[:6], "zero", *_T[7:]],
    "now-not-a-number": [*_T[:3], "soon", *_T[4:]],
    "device-empty": [_T[0], "", *_T[2:]],
    "job-id-empty": [*_T[:4], "", *_T[5:]],
    "payload-too-few": _P[:-1],
    "payload-odd-pairs": [*_P, "1"],
    "payload-index-not-a-number": [*_P, "1", "{}", "two", "{}"],
    "wakeup-too-many": [*_W, "x"],
    "wakeup-too-few": _W[:-1],
    "unknown-kind": ["x", *_T[1:]],
}


@pytest.mark.parametrize("args", MALFORMED_INGEST.values(), ids=MALFORMED_INGEST.keys())
def test_malformed_ingest_is_refused_and_writes_nothing(relay: Relay, args: list[str]) -> None:
    relay.trigger("s1", 1)
    relay.payload("s2", [event(1)])
    before = snapshot(relay.redis)
    with pytest.raises(redis.ResponseError, match="gms-relay ingest: malformed arguments"):
        relay.run("ingest", args)
    assert_unchanged(before, snapshot(relay.redis))


MALFORMED_OTHERS = {
    "register-too-few": ("register", ["s1", DEVICE, "u", "k", "", "", "1700000000000"]),
    "register-now": ("register", ["s1", DEVICE, "u", "k", "", "", "later", "job"]),
    "register-no-sid": ("register", ["", DEVICE, "u", "k", "", "", "1700000000000", "job"]),
    "forget-two": ("forget", ["s1", "s2"]),
    "forget-empty": ("forget", [""]),
    "kick-now": ("kick", ["job", "x"]),
    "claim-max": ("claim", ["1700000000000", "tok", "many", "wk"]),
    "claim-token": ("claim", ["1700000000000", "", "16", "wk"]),
    "commit-index": (
        "commit",
        ["s1", "tok-a", "1", DEVICE, "2", "1", "", "", "1", "", "", "wh", "1", "one", "Message", "{}"],
    ),
    "commit-short": ("commit", ["s1", "tok-a", "1", DEVICE, "2", "1", "", "", "1", "", "", "wh", "2"]),
    "commit-drop": ("commit", ["s1", "tok-a", "1", DEVICE, "2", "1", "", "", "1", "", "", "wh", "0", "x"]),
    "commit-again-at": ("commit", ["s1", "tok-a", "1", DEVICE, "2", "1", "", "", "1", "soon", "", "wh", "0"]),
    "commit-no-device": ("commit", ["s1", "tok-a", "1", "", "2", "1", "", "", "1", "", "", "wh", "0"]),
    "release-how": ("release", ["s1", "tok-a", "maybe", "0", "1", "1700000000000", "wh", ""]),
    "release-at": ("release", ["s1", "tok-a", "retry", "soon", "1", "1700000000000", "wh", ""]),
    "take-capacity": ("take_deliveries", ["1700000000000", "1000", "tok", "many"]),
    "done-now": ("delivery_done", ["d-1", "d-2", "now"]),
    "failed-retry-at": ("delivery_failed", ["d-1", "tok", "1700000000000", "soon", ""]),
}


@pytest.mark.parametrize("script, args", MALFORMED_OTHERS.values(), ids=MALFORMED_OTHERS.keys())
def test_every_script_refuses_malformed_arguments_before_writing(
    make_relay: RelayFactory, script: str, args: list[str]
) -> None:
    relay = make_relay(**SINK)
    chat_with_events(relay)  # s1 claimed by tok-a, with a delivery in flight
    before = snapshot(relay.redis)
    with pytest.raises(redis.ResponseError, match=f"gms-relay {script}: malformed arguments"):
        relay.run(script, args)
    assert_unchanged(before, snapshot(relay.redis))


NON_FINITE = {
    "ingest-now-nan": ("ingest", "now", "nan"),
    "ingest-position-nan": ("ingest", "position", "nan"),
    "ingest-position-inf": ("ingest", "position", "inf"),
    "commit-now-nan": ("commit", "now", "nan"),
    "release-at-nan": ("release", "at", "nan"),
}


@pytest.mark.parametrize("script, field, value", NON_FINITE.values(), ids=NON_FINITE.keys())
def test_non_finite_numbers_are_refused_and_write_nothing(
    relay: Relay, script: str, field: str, value: str
) -> None:
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    relay.trigger("s2", 1, app_dbid="a2")
    args: list[str | bytes]
    if script == "ingest":
        args = relay.trigger_args(
            "s2", value if field == "position" else 2, now=value if field == "now" else None
        )
    elif script == "commit":
        args = relay.commit_args(claim, "tok-a", 2, [event(1)], final=False, now=value)
    else:
        args = [claim.session_id, "tok-a", "retry", value, claim.gen, str(now_ms()), "wh", ""]
    before = snapshot(relay.redis)
    try:
        relay.run(script, args)
        refused = ""
    except redis.ResponseError as exc:
        refused = str(exc)
    assert_unchanged(before, snapshot(relay.redis))  # first, so a partial write is what fails
    assert f"gms-relay {script}: malformed arguments" in refused


# claim ---------------------------------------------------------------------------------------------


def test_claim_takes_due_chats_under_a_lease(relay: Relay) -> None:
    r = relay.redis
    at = now_ms()
    relay.trigger("s1", 1, user="u-1", key="k-1", app_dbid="a-1", now=at)
    relay.trigger("s2", 1, device="dev-2", now=at + 60_000)  # not due yet
    claims = relay.claim("tok-a", now=at + 1)
    assert [c.session_id for c in claims] == ["s1"]
    claim = claims[0]
    assert claim.due_ms == at
    assert claim.fields == {
        "deviceId": DEVICE,
        "alias": "a-1",
        "alias_key": "2",
        "aliases": "a-1",
        "gen": "1",
        "userId": "u-1",
        "secureKey": "k-1",
    }
    assert claim.staged == {}
    assert r.get(keys.lease("s1")) == b"tok-a"
    assert relay.lease_ms - 200 < r.pttl(keys.lease("s1")) <= relay.lease_ms
    assert relay.dirty("s1") == at + 1 + relay.lease_ms  # due again if the worker dies
    assert relay.dirty("s2") == at + 60_000
    assert not r.exists(keys.lease("s2"))


def test_claim_moves_credentials_stored_before_the_split(relay: Relay) -> None:
    """An earlier version kept userId/secureKey in the session hash, renewed with the chat's state:
    the claim moves them to the credentials key (their own, shorter lifetime)."""
    relay.trigger("s1", 1, user="", key="")
    relay.redis.hset(keys.session("s1"), mapping={"userId": "old-u", "secureKey": "old-k"})
    claim = relay.claim_one("s1")
    assert (claim.fields["userId"], claim.fields["secureKey"]) == ("old-u", "old-k")
    assert relay.redis.hgetall(keys.credentials("s1")) == {b"userId": b"old-u", b"secureKey": b"old-k"}
    assert 0 < relay.redis.pttl(keys.credentials("s1")) <= relay.settings.session_idle_ttl_s * 1000
    assert "secureKey" not in relay.session("s1")


def test_claim_returns_staged_payload_events(relay: Relay) -> None:
    relay.payload("s1", [event(2), event(1)])
    claim = relay.claim_one("s1")
    assert claim.staged == {1: bytes(event(1).raw), 2: bytes(event(2).raw)}
    assert claim.payload_mode


def test_claim_respects_its_limit(relay: Relay) -> None:
    at = now_ms()
    for n in range(5):
        relay.trigger(f"s{n}", 1, device=f"dev-{n}", now=at + n)
    assert [c.session_id for c in relay.claim("tok-a", now=at + 10, limit=2)] == ["s0", "s1"]
    assert [c.session_id for c in relay.claim("tok-b", now=at + 10, limit=16)] == ["s2", "s3", "s4"]


def test_a_leased_chat_is_not_claimed_with_another_token(relay: Relay) -> None:
    at = now_ms()
    relay.trigger("s1", 1, now=at)
    relay.claim_one("s1", "tok-a", now=at)
    assert relay.claim("tok-b", now=at + relay.lease_ms + 1) == []  # due by score, but the lease lives
    assert relay.claim("tok-a", now=at + relay.lease_ms + 1) == []  # nor again by its own holder
    assert relay.redis.get(keys.lease("s1")) == b"tok-a"


def test_an_expired_lease_makes_the_chat_claimable_again(make_relay: RelayFactory) -> None:
    relay = make_relay(LEASE_TTL_MS="210", REFRESH_TIMEOUT_MS="5")
    relay.trigger("s1", 1)
    old = relay.claim_one("s1", "tok-a")
    assert relay.claim("tok-b") == []
    time.sleep(0.25)
    assert not relay.redis.exists(keys.lease("s1"))
    new = relay.claim_one("s1", "tok-b")  # its dirty score (claim + lease) has come due too
    assert relay.redis.get(keys.lease("s1")) == b"tok-b"
    assert relay.commit(old, "tok-a", 2, [event(1)]) == 0  # the old holder is fenced out
    assert relay.commit(new, "tok-b", 2, [event(1)]) == 1
    assert [e["index"] for e in relay.stream()] == ["1"]


def test_claim_emits_waiting_wakeups(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK)
    r = relay.redis
    relay.wakeup("dev-x", "one")
    r.rpush(keys.WAKEUPS, b"not json", b'{"text":"no device"}')
    relay.wakeup("dev-y", "two")
    assert relay.claim(limit=1) == []
    assert [e["type"] for e in relay.stream("dev-x")] == ["device.wakeup"]
    assert r.llen(keys.WAKEUPS) == 3
    assert relay.claim(limit=16) == []
    assert not r.exists(keys.WAKEUPS)
    (entry,) = relay.stream("dev-y")
    assert entry["type"] == "device.wakeup" and "sessionId" not in entry
    assert json.loads(entry["data"]) == {"deviceId": "dev-y", "text": "two"}
    assert_ttl(r, keys.stream("dev-y"), relay.settings.stream_ttl_s * 1000)
    (body,) = relay.bodies(0, "~dev-y")
    assert body["type"] == "device.wakeup" and body["data"] == {"deviceId": "dev-y", "text": "two"}
    assert relay.counter("wakeups_delivered") == 2  # the two malformed ones were dropped


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
    assert len(list(_chunks(events))) == total // CHUNK_EVENTS
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


# release -------------------------------------------------------------------------------------------


def test_release_retry_counts_and_reschedules(relay: Relay) -> None:
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    at = now_ms() + 300
    assert relay.release(claim, "tok-a", "retry", at) == "retry"
    assert relay.session("s1")["retries"] == "1"
    assert relay.dirty("s1") == at
    assert not relay.redis.exists(keys.lease("s1"))
    assert relay.counter("refresh_retried") == 1
    claim = relay.claim_one("s1", now=at)
    assert relay.release(claim, "tok-a", "retry", at + 600) == "retry"
    assert relay.session("s1")["retries"] == "2"
    assert relay.commit(relay.claim_one("s1", now=at + 600), "tok-a", 2, [event(1)]) == 1
    assert relay.session("s1")["retries"] == "0"


def test_release_suspect_retries_at_once_when_a_newer_alias_is_known(relay: Relay) -> None:
    relay.trigger("s1", 1, app_dbid="a-1")
    claim = relay.claim_one("s1")
    later = now_ms() + 250
    # Refused with the only alias known: wait (or for the next push).
    assert relay.release(claim, "tok-a", "suspect", later, alias="a-1") == "suspect"
    assert relay.session("s1")["refused"] == "a-1"
    assert relay.dirty("s1") == later
    # A trigger with a newer app-dbid arrived while the next refused Refresh ran: go again at once.
    claim = relay.claim_one("s1", now=later)
    relay.trigger("s1", 1, app_dbid="a-2")
    before = now_ms()
    assert relay.release(claim, "tok-a", "suspect", before + 250, alias="a-1") == "suspect"
    assert (relay.dirty("s1") or 0) < before + 250
    assert relay.session("s1")["alias"] == "a-2"
    # A commit (GMS answered) clears the refusals.
    claim = relay.claim_one("s1", now=before + 1000)
    assert relay.commit(claim, "tok-a", 1, []) == 1
    assert "refused" not in relay.session("s1")


def test_release_suspect_falls_back_to_a_candidate_not_refused(relay: Relay) -> None:
    relay.trigger("s1", 1, app_dbid="a-1")
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 3, [event(1), event(2)], alias="resp-3") == 1  # key 7
    # The alias changed outside any Refresh (the session moved): the next trigger carries it at the
    # Refresh's own nextPosition, and the response wins that tie.
    relay.trigger("s1", 3, app_dbid="moved")  # key 6
    assert relay.session("s1")["alias"] == "resp-3"
    claim = relay.claim_one("s1")
    before = now_ms()
    assert relay.release(claim, "tok-a", "suspect", before + 250, alias="resp-3") == "suspect"
    assert relay.session("s1")["alias"] == "moved"  # refused: the newest candidate not refused
    assert (relay.dirty("s1") or 0) < before + 250
    # Refused again with one already refused: the worker ends the chat (workers/chat.py).
    assert relay.session("s1")["refused"] == "resp-3"


def test_release_later_reschedules_without_counting(relay: Relay) -> None:
    relay.payload("s1", [event(2)])
    claim = relay.claim_one("s1")
    at = now_ms() + 2000
    assert relay.release(claim, "tok-a", "later", at) == "later"
    assert relay.dirty("s1") == at
    assert "retries" not in relay.session("s1")
    assert not relay.redis.exists(keys.lease("s1"))


def _credentials_required(relay: Relay, sink: int) -> list[dict[str, Any]]:
    found = []
    for body in relay.bodies(sink, "s1"):
        if "outbox" in body:
            body = json.loads(body["outbox"][1:])
        if body["type"] == "chat.credentials_required":
            found.append(body)
    return found


def test_park_emits_credentials_required_once(make_relay: RelayFactory) -> None:
    relay = make_relay(**TWO_SINKS)
    r = relay.redis
    relay.trigger("s1", 1, user="", key="")
    claim = relay.claim_one("s1")
    at = now_ms()
    assert relay.release(claim, "tok-a", "park", now=at) == "park"
    (entry,) = relay.stream()
    assert entry["type"] == "chat.credentials_required" and entry["sessionId"] == "s1"
    assert json.loads(entry["data"]) == {"deviceId": DEVICE, "sessionId": "s1"}
    for sink in (0, 1):
        (body,) = _credentials_required(relay, sink)
        assert body["data"] == {"deviceId": DEVICE, "sessionId": "s1"}
    assert r.zscore(keys.PARKED, "s1") == at
    assert_ttl(r, keys.PARKED, relay.settings.chat_state_ttl_s * 1000)
    assert relay.dirty("s1") is None
    assert not r.exists(keys.lease("s1"))
    assert relay.counter("credentials_required") == 1
    # Another trigger without a secure key: parked again, nothing emitted again.
    relay.trigger("s1", 1, user="", key="")
    assert relay.release(relay.claim_one("s1"), "tok-a", "park") == "park"
    assert len(relay.stream()) == 1
    assert [len(_credentials_required(relay, sink)) for sink in (0, 1)] == [1, 1]
    assert r.zscore(keys.PARKED, "s1") == at  # NX: still parked since the first time
    assert relay.counter("credentials_required") == 1
    assert relay.counter("refresh_parked") == 2


def test_registering_unparks_so_a_later_park_emits_again(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK)
    r = relay.redis
    relay.trigger("s1", 1, user="", key="")
    relay.release(relay.claim_one("s1"), "tok-a", "park")
    assert relay.register("s1") == "registered"
    assert r.zscore(keys.PARKED, "s1") is None
    relay.redis.delete(keys.credentials("s1"))  # they expired (SESSION_IDLE_TTL_S)
    assert relay.release(relay.claim_one("s1"), "tok-a", "park") == "park"
    assert [e["type"] for e in relay.stream()] == ["chat.credentials_required"] * 2
    assert len(_credentials_required(relay, 0)) == 2
    assert relay.counter("credentials_required") == 2


def test_release_drop(relay: Relay) -> None:
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    assert relay.release(claim, "tok-a", "drop") == "drop"
    assert relay.dirty("s1") is None
    assert not relay.redis.exists(keys.lease("s1"))
    assert not relay.redis.exists(keys.stream(DEVICE))
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    relay.trigger("s1", 1)  # a push during the lease keeps the chat due
    assert relay.release(claim, "tok-a", "drop") == "drop"
    assert relay.dirty("s1") is not None


def test_release_with_a_wrong_token_is_fenced(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK)
    relay.trigger("s1", 1, user="", key="")
    claim = relay.claim_one("s1", "tok-a")
    before = snapshot(relay.redis, ignore=[keys.COUNTERS])
    for how in ["retry", "later", "park", "drop"]:
        assert relay.release(claim, "tok-b", how, now_ms()) == "fenced"
    assert_unchanged(before, snapshot(relay.redis, ignore=[keys.COUNTERS]))
    assert relay.counter("commit_fenced") == 4


def _keys_without_ttl(client: redis.Redis) -> list[str]:
    """The relay's keys that never expire, but for the counters hash (fixed size, kept for good)."""
    found = (text(k) for k in client.keys(f"{keys.PREFIX}:*") if client.pttl(k) == -1)
    return sorted(k for k in found if k != keys.COUNTERS)


@pytest.mark.parametrize("how", ["retry", "later", "park", "drop"])
@pytest.mark.parametrize("gone", ["forgotten", "expired"])
def test_release_after_the_chat_was_forgotten_creates_no_key_without_ttl(
    make_relay: RelayFactory, how: str, gone: str
) -> None:
    relay = make_relay(**SINK)
    r = relay.redis
    relay.register("s1", alias="a")
    claim = relay.claim_one("s1")
    if gone == "forgotten":
        assert relay.forget("s1") == 1  # DELETE /sessions/s1 during the lease
    else:
        r.delete(keys.session("s1"), keys.credentials("s1"))
    assert relay.release(claim, "tok-a", how, now_ms() + 500) == "drop"
    if gone == "expired":
        # `gen` vanished with the hash, so the chat stays due (at the lease's end); the next claim finds
        # no state and drops it (workers/chat.py `process`), and that removes it.
        assert _keys_without_ttl(r) == [keys.DIRTY]
        again = relay.claim_one("s1", now=now_ms() + relay.lease_ms + 1)
        assert again.fields == {}
        assert relay.release(again, "tok-a", "drop") == "drop"
        assert not r.exists(keys.session("s1"))
    assert _keys_without_ttl(r) == []
    assert relay.dirty("s1") is None
    assert not r.exists(keys.stream(DEVICE))  # no chat.credentials_required for a forgotten chat
    assert r.zscore(keys.PARKED, "s1") is None


# register / forget ---------------------------------------------------------------------------------


def test_register_stores_credentials_and_pulls_the_transcript(relay: Relay) -> None:
    r = relay.redis
    at = now_ms()
    relay.redis.delete(keys.DRAIN_QUEUED)
    assert relay.register("s1", user="u", key="k", alias="12", service="svc", now=at) == "registered"
    assert r.hgetall(keys.credentials("s1")) == {b"userId": b"u", b"secureKey": b"k"}
    assert relay.session("s1") == {
        "deviceId": DEVICE,
        "alias": "12",
        "alias_key": "-1",
        "service": "svc",
        "gen": "1",
    }
    assert_ttl(r, keys.credentials("s1"), 100_000)  # SESSION_IDLE_TTL_S
    assert_ttl(r, keys.session("s1"), 1_000_000)  # CHAT_STATE_TTL_S
    assert_ttl(r, keys.device(DEVICE), 1_000_000)
    assert relay.dirty("s1") == at
    assert len(drain_jobs(r)) == 1


def test_forget_removes_credentials_and_work_but_keeps_the_cursor(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK)
    r = relay.redis
    relay.trigger("s1", 1, user="", key="")
    claim = relay.claim_one("s1")
    assert relay.commit(claim, "tok-a", 3, [event(1), event(2)], again_at=now_ms()) == 1
    relay.release(relay.claim_one("s1"), "tok-a", "park")
    relay.payload("s1", [event(5)])
    r.hset(keys.credentials("s1"), "userId", "u")
    assert r.zscore(keys.PARKED, "s1") is not None and relay.dirty("s1") is not None
    assert relay.forget("s1") == 2
    for key in [keys.credentials("s1"), keys.staged("s1"), keys.device(DEVICE)]:
        assert not r.exists(key), key
    assert relay.dirty("s1") is None
    assert r.zscore(keys.PARKED, "s1") is None
    state = relay.session("s1")
    assert state["cursor"] == "3" and "deviceId" not in state
    assert relay.forget("s1") == 0
    # Registering again resumes from the cursor.
    relay.register("s1")
    assert relay.claim_one("s1").cursor == 3


def test_forget_keeps_a_device_mapping_that_moved_to_another_chat(relay: Relay) -> None:
    relay.trigger("s1", 1)
    relay.trigger("s2", 1)  # the device is chatting in s2 now
    relay.forget("s1")
    assert relay.redis.get(keys.device(DEVICE)) == b"s2"


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


# TTLs ----------------------------------------------------------------------------------------------


def test_every_key_the_scripts_write_has_a_ttl(make_relay: RelayFactory) -> None:
    relay = make_relay(**SINK)
    r = relay.redis
    # A reliable chat with credentials, claimed and committed (a webhook delivery in flight).
    claim = chat_with_events(relay, "s1")
    # A chat without credentials, parked, then registered.
    relay.trigger("s2", 1, device="dev-2", user="", key="")
    relay.release(relay.claim_one("s2"), "tok-a", "park")
    relay.register("s2", device="dev-2")
    # A payload chat, a wake-up emitted by a claim and one still waiting, a chat that ended.
    relay.payload("s3", [event(1), event(2)], device="dev-3")
    relay.wakeup("dev-9")
    claims = {c.session_id: c for c in relay.claim("tok-a")}
    assert sorted(claims) == ["s2", "s3"]
    relay.wakeup("dev-8")
    relay.trigger("s4", 1, device="dev-4")
    relay.commit(relay.claim_one("s4"), "tok-a", 2, [event(1)], end_reason="chatEnded")
    # Global work indexes have no TTL, like RQ's queues: each holds only live members.
    indexes = [keys.DIRTY, keys.DELIVERIES]
    assert _keys_without_ttl(r) == sorted(indexes)
    for sid in r.zrange(keys.DIRTY, 0, -1):
        assert r.pttl(keys.session(text(sid))) > 0
    for delivery_id in r.zrange(keys.DELIVERIES, 0, -1):
        assert r.pttl(keys.delivery(text(delivery_id))) > 0
    # RQ's keys: the drain job hashes, like Queue.enqueue's, have no TTL until a worker runs them
    # (result_ttl=0 deletes them then); every one of them is in the queue.
    job_keys = sorted(text(k) for k in r.keys("rq:job:*"))
    assert job_keys and all(r.pttl(k) == -1 for k in job_keys)
    assert job_keys == sorted(f"rq:job:{j}" for j in drain_jobs(r))
    assert Job.fetch(drain_jobs(r)[0], connection=r, serializer=JSONSerializer).result_ttl == 0
    assert r.pttl(keys.rq_queue(keys.DRAIN_QUEUE)) == -1 and r.pttl(keys.RQ_QUEUES) == -1
    # Settle everything: then no key but the counters hash lacks a TTL.
    assert relay.commit(claim, "tok-a", 5, [event(4)]) == 1
    assert relay.commit(claims["s2"], "tok-a", 1) == 1
    assert relay.commit(claims["s3"], "tok-a", 3, [event(1), event(2)], drops=[1, 2]) == 1
    relay.claim("tok-a")  # emits dev-8's wake-up
    while delivery_ids := r.zrange(keys.DELIVERIES, 0, -1):
        for delivery_id in delivery_ids:
            relay.done(text(delivery_id))
    assert _keys_without_ttl(r) == []
    assert r.exists(keys.COUNTERS)
    prefixes = {":".join(text(k).split(":")[:2]) for k in r.keys(f"{keys.PREFIX}:*")}
    assert prefixes >= {"gms-relay:session", "gms-relay:creds", "gms-relay:events", "gms-relay:ended"}


def test_a_sink_failing_in_a_row_is_down_probed_once_a_second_then_resumes_every_chat(
    make_relay: RelayFactory,
) -> None:
    relay = make_relay(**SINK)
    r = relay.redis
    chats = SINK_DOWN_AFTER + 2
    for n in range(chats):
        chat_with_events(relay, sid=f"s{n}", count=1)
    at = now_ms() + 1
    rows = relay.take("lease-1", now=at, room=chats)
    assert len(rows) == chats
    outcomes = [relay.failed(row[0], "lease-1", at, str(at + 60_000)) for row in rows]
    # The SINK_DOWN_AFTER-th failure in a row: the sink is down.
    assert outcomes == ["retry"] * (SINK_DOWN_AFTER - 1) + ["parked"] * 3
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
