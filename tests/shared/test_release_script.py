"""release: retry, suspect, later, park and drop, fenced and after the chat was forgotten."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared import keys
from shared.clock import now_ms
from tests.shared.scripts_relay import (
    DEVICE,
    SINK,
    TWO_SINKS,
    Relay,
    RelayFactory,
    assert_ttl,
    assert_unchanged,
    event,
    keys_without_ttl,
    snapshot,
)

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
        assert keys_without_ttl(r) == [keys.DIRTY]
        again = relay.claim_one("s1", now=now_ms() + relay.lease_ms + 1)
        assert again.fields == {}
        assert relay.release(again, "tok-a", "drop") == "drop"
        assert not r.exists(keys.session("s1"))
    assert keys_without_ttl(r) == []
    assert relay.dirty("s1") is None
    assert not r.exists(keys.stream(DEVICE))  # no chat.credentials_required for a forgotten chat
    assert r.zscore(keys.PARKED, "s1") is None
