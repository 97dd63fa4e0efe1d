"""Resource bounds (issue #5 item 4): every relay key expires or is removed; streams stay capped."""

from __future__ import annotations

import time

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from shared import keys
from shared.redis_server import RedisServer
from simulator.server import ChatServer
from tests.conftest import SettingsFactory
from tests.pushes import body, event, payload_message
from tests.security.conftest import ClientFactory
from tests.security.helpers import key_type, pipeline
from workers.context import WorkerContext, set_context

# Every key expires ---------------------------------------------------------------------------------


def _unbounded(client: redis.Redis) -> list[str]:
    """Keys with no TTL, except the fixed-size global ones: the counters hash and RQ's own
    bookkeeping (`rq:*`), of which job hashes (`rq:job:*`) must still expire or be deleted."""
    found = []
    for raw_key in client.scan_iter(count=1000):
        key = raw_key.decode()
        if key == keys.COUNTERS or (key.startswith("rq:") and not key.startswith("rq:job:")):
            continue
        ttl = client.pttl(raw_key)
        if ttl == -1:
            found.append(f"{key} ({key_type(client, raw_key)})")
    return sorted(found)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_every_key_the_relay_creates_expires_or_is_removed(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    chat_server.faults.fail_refresh_http503 = 0.05  # retries and backoffs leave their own keys
    chat_server.faults.fail_refresh_status1 = 0.05
    with pipeline(redis_server, redis_client, chat_server, mode="mixed"):
        # Give the drains still queued (and RQ's job hashes) their moment to finish.
        deadline = time.monotonic() + 10
        while _unbounded(redis_client) and time.monotonic() < deadline:
            time.sleep(0.1)
        offenders = _unbounded(redis_client)
        all_keys = sorted(k.decode() for k in redis_client.scan_iter(count=1000))
    assert offenders == [], f"keys without a TTL: {offenders}"
    assert keys.COUNTERS in all_keys
    assert any(key.startswith("gms-relay:ended:") for key in all_keys)  # the run left per-chat keys


# Stream length cap ---------------------------------------------------------------------------------


def test_stream_length_cap_holds(
    make_settings: SettingsFactory, make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    """STREAM_MAXLEN=20 with `XADD MAXLEN ~`: Redis only drops whole stream nodes (at most 100
    entries each, `stream-node-max-entries`), so a stream may exceed 20 by up to 99 entries, never
    grow with its input."""
    settings = make_settings(GMS_URL="http://127.0.0.1:9", STREAM_MAXLEN="20")
    client = make_client(STREAM_MAXLEN="20")
    context = WorkerContext.build(settings)
    set_context(context)
    queues = [Queue(q, connection=redis_client, serializer=JSONSerializer) for q in keys.QUEUES]
    lengths = []
    try:
        for first in range(1, 201, 10):
            events = [event(i) for i in range(first, first + 10)]
            reply = client.post("/push", content=body(payload_message(events), device_id="capped"))
            assert reply.json() == {"status": "queued"}
            SimpleWorker(queues, connection=redis_client, serializer=JSONSerializer).work(burst=True)
            lengths.append(redis_client.xlen(keys.stream("capped")))
    finally:
        set_context(None)
        context.close()
    assert redis_client.hget(keys.session("s1"), "cursor") == b"201"  # all 200 were delivered
    newest: list[tuple[bytes, dict[bytes, bytes]]] = redis_client.xrevrange(keys.stream("capped"), count=1)  # type: ignore[assignment]
    assert newest[0][1][b"index"] == b"200"
    assert max(lengths) <= 20 + 100 - 1, lengths
    assert lengths[-1] < 150, lengths
