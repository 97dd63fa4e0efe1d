"""A drain that loses the Redis primary mid-way ends quietly once the primary answers again, not as a
failed RQ job, and its chat is drained again. The real ingress, a real Redis and an RQ SimpleWorker;
the fault is the one redis-py raises while the Sentinels name no primary (a failover in progress),
raised where it raises it (a pool opening a connection), for the drain's client and RQ's alike, from
just after the drain claimed the chat until the primary is back a moment later."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import redis
from redis.sentinel import MasterNotFoundError
from starlette.testclient import TestClient

import workers.drain
from shared import keys
from tests.pushes import body, event, payload_message
from tests.workers.conftest import Burst, BurstUntil, stream_entries
from workers.claims import Claim
from workers.context import WorkerContext, get_context

OUTAGE_S = 1.0


def test_a_drain_that_loses_the_primary_ends_quietly_and_its_chat_is_drained_again(
    ingress: TestClient,
    burst: Burst,
    burst_until: BurstUntil,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingress.post("/push", content=body(payload_message([event(1)])))
    lost = threading.Event()
    outages: list[threading.Timer] = []
    real_claim = workers.drain._claim

    def without_primary(pool: redis.ConnectionPool) -> None:
        real = pool.get_connection

        def get_connection(*args: Any, **kwargs: Any) -> Any:
            if lost.is_set():
                raise MasterNotFoundError("No master found for 'mymaster'")
            return real(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", get_connection)

    def claim_then_lose_the_primary(ctx: WorkerContext, token: str) -> list[Claim]:
        claims = real_claim(ctx, token)
        if claims and not outages:
            lost.set()
            outages.append(threading.Timer(OUTAGE_S, lost.clear))
            outages[0].start()
        return claims

    without_primary(get_context().redis.connection_pool)  # the drain's client
    without_primary(redis_client.connection_pool)  # RQ's (the burst's SimpleWorker)
    monkeypatch.setattr(workers.drain, "_claim", claim_then_lose_the_primary)
    with caplog.at_level(logging.WARNING, logger="gms_relay.worker"):
        burst()  # RQ records the drain's end on the primary, back by then: no exception escapes
    assert outages, "the drain claimed the chat, then lost the primary"
    outages[0].join()
    assert redis_client.zcard(f"rq:failed:{keys.DRAIN_QUEUE}") == 0, "no failed drain job"
    assert any("drain lost the Redis primary" in r.getMessage() for r in caplog.records)
    assert stream_entries(redis_client, "d1") == []
    assert redis_client.zscore(keys.DIRTY, "s1") is not None, "still dirty: due when its lease ends"
    monkeypatch.undo()
    burst_until(lambda: len(stream_entries(redis_client, "d1")) == 1)  # the watcher kicks a drain
    assert [e["index"] for e in stream_entries(redis_client, "d1")] == ["1"]
    assert redis_client.zcard(f"rq:failed:{keys.DRAIN_QUEUE}") == 0
