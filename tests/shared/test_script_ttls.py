"""Every key the scripts write has a TTL, but the global work indexes and RQ's own keys."""

from __future__ import annotations

from rq.job import Job
from rq.serializers import JSONSerializer

from shared import keys
from tests.shared.scripts_relay import (
    SINK,
    RelayFactory,
    chat_with_events,
    drain_jobs,
    event,
    keys_without_ttl,
    text,
)

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
    assert keys_without_ttl(r) == sorted(indexes)
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
    assert keys_without_ttl(r) == []
    assert r.exists(keys.COUNTERS)
    prefixes = {":".join(text(k).split(":")[:2]) for k in r.keys(f"{keys.PREFIX}:*")}
    assert prefixes >= {"gms-relay:session", "gms-relay:creds", "gms-relay:events", "gms-relay:ended"}
