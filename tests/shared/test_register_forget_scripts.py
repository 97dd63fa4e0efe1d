"""register and forget: credentials stored or removed, the cursor kept."""

from __future__ import annotations

from shared import keys
from shared.clock import now_ms
from tests.shared.scripts_relay import (
    DEVICE,
    SINK,
    Relay,
    RelayFactory,
    assert_ttl,
    drain_jobs,
    event,
)

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
