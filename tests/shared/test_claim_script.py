"""claim: due chats taken under a lease, staged payloads, waiting wake-ups emitted."""

from __future__ import annotations

import json
import time

from shared import keys
from shared.clock import now_ms
from tests.shared.scripts_relay import (
    DEVICE,
    SINK,
    Relay,
    RelayFactory,
    assert_ttl,
    event,
)

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
