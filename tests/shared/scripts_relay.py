"""The Lua scripts of shared/lua, called as their Python callers call them: `Relay` and the helpers the
tests/shared/test_*script*.py modules share (fixtures `make_relay` and `relay` in tests/shared/conftest.py).

rq's tests/test_scripts.py is the model: each test calls a script with the named arguments of its declared
interface (shared/scripts.py), as its Python caller does (ingress/store.py, workers/drain.py,
workers/transitions.py, workers/webhooks.py), and asserts what it returned and what it left in Redis."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
import redis

from shared import keys
from shared.clock import now_ms
from shared.ids import IdSource
from shared.models import Event
from shared.scripts import INTERFACES, ScriptSources
from shared.settings import Settings
from workers.claims import Claim
from workers.transitions import Transitions

DEVICE = "dev-1"
SINK = {"WEBHOOK_URL": "http://127.0.0.1:9/hook"}
TWO_SINKS = {"WEBHOOK_URL": "http://127.0.0.1:9/a,http://127.0.0.1:9/b"}
# Two lifetimes that tell credentials and chat state apart in PTTL checks.
TTLS = {"SESSION_IDLE_TTL_S": "100", "CHAT_STATE_TTL_S": "1000"}


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
        self.chunks = Transitions(self.scripts, IdSource(), settings).chunks

    @property
    def lease_ms(self) -> int:
        return self.settings.lease_ttl_ms

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def run(self, script: str, args: Sequence[str | bytes | int]) -> Any:
        """A call with ARGV as given (the script's own checks see exactly this)."""
        return self.scripts[script].raw(args)

    @staticmethod
    def argv(script: str, rest: Sequence[str | bytes | int] = (), **named: Any) -> list[str | bytes | int]:
        return INTERFACES[script].argv(named, rest)

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
    ) -> list[str | bytes | int]:
        return self.argv(
            "ingest_trigger",
            device=device,
            sid=sid,
            now_ms=now_ms() if now is None else now,
            job_id=job or self.new_id("drain"),
            position=position,
            attempt=attempt,
            user_id=user,
            secure_key=key,
            app_dbid=app_dbid,
        )

    def trigger(self, sid: str, position: int | str, attempt: int | str = 0, **kw: Any) -> str:
        return text(self.run("ingest_trigger", self.trigger_args(sid, position, attempt, **kw)))

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
        rest: list[str | bytes | int] = []
        for e in events:
            rest += [e.index, bytes(e.raw)]
        named: dict[str, Any] = {"device": device, "sid": sid, "now_ms": now or now_ms()}
        named["job_id"] = self.new_id("drain")
        args = self.argv("ingest_payload", rest, chat_ended=ended, alias=alias, **named)
        return text(self.run("ingest_payload", args))

    def wakeup(self, device: str, note: str = "hello", now: int | None = None) -> str:
        body = json.dumps({"deviceId": device, "text": note}).encode()
        named: dict[str, Any] = {"device": device, "now_ms": now or now_ms(), "body": body}
        named["job_id"] = self.new_id("drain")
        return text(self.run("ingest_wakeup", self.argv("ingest_wakeup", **named)))

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
        return text(
            self.scripts["register"](
                sid=sid,
                device=device,
                user_id=user,
                secure_key=key,
                alias=alias,
                service=service,
                now_ms=now or now_ms(),
                job_id=self.new_id("drain"),
            )
        )

    def forget(self, sid: str) -> int:
        return int(self.scripts["forget"](sid=sid))

    # workers/drain.py
    def claim(self, token: str = "tok-a", now: int | None = None, limit: int = 16) -> list[Claim]:
        rows = self.scripts["claim"](
            now_ms=now or now_ms(), token=token, max=limit, job_base=self.new_id("wk")
        )
        return [Claim.parse(row) for row in rows]

    def claim_one(self, sid: str, token: str = "tok-a", now: int | None = None) -> Claim:
        claims = {c.session_id: c for c in self.claim(token, now)}
        return claims[sid]

    # workers/transitions.py
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
    ) -> list[str | bytes | int]:
        rest: list[str | bytes | int] = []
        for e in events:
            rest += [e.index, e.type, bytes(e.raw)]
        rest += drops
        return self.argv(
            "commit",
            rest,
            sid=claim.session_id,
            token=token,
            now_ms=now_ms() if now is None else now,
            device=claim.device_id or "",
            cursor=cursor,
            final=final,
            alias=alias if final else "",
            end_reason=end_reason if final else "",
            gen=claim.gen if gen is None else gen,
            again_at_ms=again_at if final else None,
            gap_since_ms=gap_since if final else None,
            id_base=self.new_id("wh"),
            n_events=len(events),
        )

    def commit(self, claim: Claim, token: str, cursor: int, events: Sequence[Event] = (), **kw: Any) -> int:
        return int(self.run("commit", self.commit_args(claim, token, cursor, events, **kw)))

    def commit_chunked(self, claim: Claim, token: str, cursor: int, events: list[Event]) -> None:
        """What Transitions.commit sends for an outcome (without staged drops): one fenced call per
        chunk, every chunk but the last moving the cursor just past its events."""
        chunks = list(self.chunks(events))
        for number, chunk in enumerate(chunks):
            final = number == len(chunks) - 1
            at = cursor if final else chunk[-1].index + 1
            assert self.commit(claim, token, at, chunk, final=final) == 1

    def release(
        self, claim: Claim, token: str, how: str, at: int | str = 0, now: int | None = None, alias: str = ""
    ) -> str:
        return text(self.run("release", self.release_args(claim, token, how, at, now, alias)))

    def release_args(
        self, claim: Claim, token: str, how: str, at: int | str = 0, now: int | None = None, alias: str = ""
    ) -> list[str | bytes | int]:
        return self.argv(
            "release",
            sid=claim.session_id,
            token=token,
            how=how,
            at_ms=at,
            gen=claim.gen,
            now_ms=now or now_ms(),
            id_base=self.new_id("wh"),
            alias=alias,
        )

    # workers/webhooks.py
    def take(
        self, token: str = "lease-1", now: int | None = None, lease_ms: int = 10_000, room: int = 8
    ) -> list[Any]:
        rooms = [room] * len(self.settings.webhook_urls)
        return list(
            self.scripts["take_deliveries"](rooms, now_ms=now or now_ms(), lease_ms=lease_ms, token=token)
        )

    def failed(self, delivery_id: Any, token: str, now: int, retry_at: str, gone: bool = False) -> str:
        args = self.argv(
            "delivery_failed", id=delivery_id, token=token, now_ms=now, retry_at_ms=retry_at, gone=gone
        )
        return text(self.run("delivery_failed", args))

    def done(self, delivery_id: str) -> int:
        return int(self.scripts["delivery_done"](id=delivery_id, next_id=self.new_id("wh"), now_ms=now_ms()))

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


def keys_without_ttl(client: redis.Redis) -> list[str]:
    """The relay's keys that never expire, but for the counters hash (fixed size, kept for good)."""
    found = (text(k) for k in client.keys(f"{keys.PREFIX}:*") if client.pttl(k) == -1)
    return sorted(k for k in found if k != keys.COUNTERS)
