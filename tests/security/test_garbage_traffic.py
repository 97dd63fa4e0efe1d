"""Valid /push traffic interleaved with garbage bodies on one keep-alive connection is still served."""

from __future__ import annotations

import httpx
import redis

from shared import keys
from shared.classify import classify
from shared.errors import InvalidJson, InvalidPush
from shared.redis_server import RedisServer
from tests.processes import relay_env, relay_processes
from tests.pushes import body, trigger_message
from tests.security.corpus import CORPUS

ROUNDS, PER_ROUND = 3, 100


def _refused(content: bytes) -> bool:
    try:
        classify(content)
    except (InvalidJson, InvalidPush):
        return True
    return False


def test_valid_traffic_interleaved_with_garbage_is_still_served(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Valid triggers, alone and each followed by a garbage body on the same keep-alive connection, are
    all answered `queued` and stored. Every request has 5 s to complete, so garbage that stalls the
    relay (a hang, a blocked event loop, a poisoned connection) fails the test; timing is a benchmark's
    job, not this test's."""
    # Bodies the relay refuses (this test is about their effect on valid traffic, not which ones it refuses).
    garbage = [content for content, status, _ in CORPUS.values() if status == 413 or _refused(content)]
    with (
        relay_processes(relay_env(REDIS_URL=redis_server.url), workers=0) as relay,
        httpx.Client(base_url=relay.base_url, timeout=5.0) as http,
    ):

        def valid(session: str) -> None:
            content = body(trigger_message(1, session_id=session), device_id=f"dev-{session}")
            reply = http.post("/push", content=content)
            assert reply.json() == {"status": "queued"}, reply.text

        for i in range(PER_ROUND):  # valid traffic before any garbage
            valid(f"warm-{i}")
        for round_ in range(ROUNDS):
            for i in range(PER_ROUND):
                valid(f"alone-{round_}-{i}")
            for i in range(PER_ROUND):
                valid(f"mixed-{round_}-{i}")
                refused = http.post("/push", content=garbage[(round_ * PER_ROUND + i) % len(garbage)])
                assert 400 <= refused.status_code < 500, refused.text
    # Every valid trigger was stored (one chat each); no garbage was.
    chats = sum(1 for _ in redis_client.scan_iter(keys.session("*"), count=1000))
    assert chats == PER_ROUND * (1 + 2 * ROUNDS)
