"""Hostile /push input (issue #7 item 2): every malformed body is refused with a JSON 4xx, Redis untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from shared import keys
from tests.security.conftest import ClientFactory
from tests.security.corpus import CORPUS, LIMIT, OVERSIZE, VALID_TRIGGER, trigger_with, wakeup_of_size


@pytest.mark.parametrize(
    ("content", "status", "code"), [pytest.param(*case, id=name) for name, case in CORPUS.items()]
)
def test_bad_push_is_refused_and_nothing_is_stored(
    make_client: ClientFactory, redis_client: redis.Redis, content: bytes, status: int, code: str
) -> None:
    client = make_client()
    reply = client.post("/push", content=content)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"] == code, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert set(reply.json()) == {"error", "detail"} and reply.json()["detail"]
    assert redis_client.dbsize() == 0, sorted(redis_client.keys("*"))


@pytest.mark.parametrize("name", OVERSIZE)
def test_oversize_body_without_content_length_is_413(
    make_client: ClientFactory, redis_client: redis.Redis, name: str
) -> None:
    content = CORPUS[name][0]

    def chunks() -> Iterator[bytes]:  # chunked transfer: the limit is enforced while reading
        for start in range(0, len(content), 8192):
            yield content[start : start + 8192]

    reply = make_client().post("/push", content=chunks())
    assert reply.status_code == 413
    assert reply.json()["error"] == "payload_too_large"
    assert redis_client.dbsize() == 0


def test_a_body_of_exactly_the_limit_is_accepted(
    make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    client = make_client()
    assert client.post("/push", content=wakeup_of_size(LIMIT)).json() == {"status": "wakeup"}
    assert client.post("/push", content=wakeup_of_size(LIMIT + 1)).status_code == 413
    assert redis_client.llen(keys.WAKEUPS) == 1


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_wrong_method_is_json_405(make_client: ClientFactory, redis_client: redis.Redis, method: str) -> None:
    reply = make_client().request(method, "/push", content=VALID_TRIGGER)
    assert reply.status_code == 405
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["allow"] == "POST"
    assert reply.json()["error"] == "method_not_allowed"
    assert redis_client.dbsize() == 0


def test_duplicate_members_keep_the_last_occurrence(
    make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    """msgspec, like Python's json module, keeps the last of duplicate members: a body whose every
    occurrence is valid is accepted (200) and acted on with the last value; an invalid occurrence
    anywhere is refused (400), whichever comes last. The same body always gets the same answer."""
    client = make_client()
    device_twice = b'{"deviceId": "first", "deviceId": "last", "message": "dummy message"}'
    assert [client.post("/push", content=device_twice).status_code for _ in range(3)] == [200] * 3
    stored = [json.loads(w) for w in redis_client.lrange(keys.WAKEUPS, 0, -1)]
    assert {w["deviceId"] for w in stored} == {"last"}
    # Inside the trigger's userData (a dict): the last notify-position is the one acted on.
    position_twice = trigger_with("notify-position", b'"abc", "notify-position": "8"')
    assert client.post("/push", content=position_twice).json() == {"status": "queued"}
    redis_client.hset(keys.session("s1"), "cursor", 9)
    assert client.post("/push", content=position_twice).json() == {"status": "covered"}  # 8 < 9
    redis_client.flushall()
    for content in (
        b'{"deviceId": 5, "deviceId": "last", "message": "x"}',
        b'{"deviceId": "first", "deviceId": 5, "message": "x"}',
        trigger_with("notify-position", b'"8", "notify-position": "abc"'),
    ):
        assert [client.post("/push", content=content).status_code for _ in range(2)] == [400, 400]
    assert redis_client.dbsize() == 0
