"""POST /push: reply codes, encodings, what is stored and what never is."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from starlette.testclient import TestClient

from shared import keys
from tests.ingress.conftest import ClientFactory
from tests.pushes import body, event, payload_message, trigger_message


def stored_keys(client: redis.Redis) -> set[str]:
    return {str(k) for k in client.keys("*")}


def test_trigger_is_stored_as_an_rq_job_and_a_dirty_chat(
    client: TestClient, redis_client: redis.Redis
) -> None:
    reply = client.post("/push", content=body(trigger_message(3)))
    assert reply.status_code == 200
    assert reply.json() == {"status": "queued"}
    assert redis_client.zscore(keys.DIRTY, "s1") is not None
    queue = Queue(keys.DRAIN_QUEUE, connection=redis_client, serializer=JSONSerializer)
    [job_id] = queue.get_job_ids()
    job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
    assert job.func_name == keys.DRAIN_JOB
    assert job.get_status() == "queued"
    assert job.result_ttl == 0
    session = redis_client.hgetall(keys.session("s1"))
    assert session[b"deviceId"] == b"d1"
    assert redis_client.hgetall(keys.credentials("s1")) == {b"userId": b"u1"}  # no secure key: none kept
    assert redis_client.get(keys.device("d1")) == b"s1"


@pytest.mark.parametrize("encoding", ["object", "string"])
def test_trigger_accepted_as_object_or_json_string(
    client: TestClient, redis_client: redis.Redis, encoding: str
) -> None:
    reply = client.post("/push", content=body(trigger_message(5), encoding=encoding))
    assert reply.status_code == 200
    assert redis_client.zscore(keys.DIRTY, "s1") is not None


def test_plain_text_message_is_a_wakeup(client: TestClient, redis_client: redis.Redis) -> None:
    reply = client.post("/push", content=body("dummy message"))
    assert reply.status_code == 200
    assert reply.json() == {"status": "wakeup"}
    assert redis_client.lrange(keys.WAKEUPS, 0, -1) == [b'{"deviceId":"d1","text":"dummy message"}']


def test_wakeup_for_a_device_in_a_chat_refreshes_that_chat(
    client: TestClient, redis_client: redis.Redis
) -> None:
    assert client.post("/push", content=body(trigger_message(1))).status_code == 200
    redis_client.zrem(keys.DIRTY, "s1")
    reply = client.post("/push", content=body("dummy message"))
    assert reply.json() == {"status": "queued"}
    assert redis_client.zscore(keys.DIRTY, "s1") is not None
    assert redis_client.llen(keys.WAKEUPS) == 0


def test_secure_key_from_user_data_is_kept_message_secure_key_never(
    client: TestClient, redis_client: redis.Redis
) -> None:
    assert client.post("/push", content=body(trigger_message(1, secure_key="REST-KEY"))).status_code == 200
    assert redis_client.hget(keys.credentials("s1"), "secureKey") == b"REST-KEY"
    assert redis_client.hget(keys.session("s1"), "secureKey") is None  # only in the credentials key
    dump = b"".join(redis_client.dump(k) or b"" for k in redis_client.keys("*"))
    assert b"COMETD-ONLY-KEY" not in dump


def test_trigger_without_session_id_uses_the_device_registration(
    client: TestClient, redis_client: redis.Redis
) -> None:
    assert client.post("/push", content=body(trigger_message(1, session_id=None))).json() == {
        "status": "wakeup"
    }
    redis_client.set(keys.device("d1"), "s9")
    assert client.post("/push", content=body(trigger_message(1, session_id=None))).json() == {
        "status": "queued"
    }
    assert redis_client.zscore(keys.DIRTY, "s9") is not None


def test_position_minus_one_ends_the_chat_as_removed(client: TestClient, redis_client: redis.Redis) -> None:
    assert client.post("/push", content=body(trigger_message(-1))).status_code == 200
    assert redis_client.hget(keys.session("s1"), "end") == b"removed"
    assert redis_client.zscore(keys.DIRTY, "s1") is not None


def test_repeated_trigger_keys_are_never_dropped(client: TestClient, redis_client: redis.Redis) -> None:
    """Chat Server sends one trigger per new event, all with the same (position, attempt 0) until a
    Refresh is processed: a repeat may announce new events, so each one counts (bumps `gen`)."""
    first = client.post("/push", content=body(trigger_message(4, attempt=0)))
    again = client.post("/push", content=body(trigger_message(4, attempt=0)))
    resend = client.post("/push", content=body(trigger_message(4, attempt=1)))
    assert [r.status_code for r in (first, again, resend)] == [200, 200, 200]
    assert [r.json()["status"] for r in (first, again, resend)] == ["queued"] * 3
    assert redis_client.hget(keys.session("s1"), "gen") == b"3"
    assert redis_client.zcard(keys.DIRTY) == 1  # still one Refresh to do, not three


def test_app_dbid_is_the_alias_until_a_newer_source(client: TestClient, redis_client: redis.Redis) -> None:
    assert client.post("/push", content=body(trigger_message(4, app_dbid="117"))).status_code == 200
    assert redis_client.hget(keys.session("s1"), "alias") == b"117"
    # A later trigger (same or higher position) carries the current alias.
    client.post("/push", content=body(trigger_message(4, app_dbid="118")))
    assert redis_client.hget(keys.session("s1"), "alias") == b"118"
    # A late trigger computed before a newer one (lower position) never brings the old alias back.
    client.post("/push", content=body(trigger_message(3, app_dbid="117")))
    assert redis_client.hget(keys.session("s1"), "alias") == b"118"


def test_trigger_below_the_cursor_is_covered(client: TestClient, redis_client: redis.Redis) -> None:
    redis_client.hset(keys.session("s1"), "cursor", 10)
    assert client.post("/push", content=body(trigger_message(9))).json() == {"status": "covered"}
    assert redis_client.zscore(keys.DIRTY, "s1") is None
    assert client.post("/push", content=body(trigger_message(10))).json() == {"status": "queued"}


def test_payload_events_are_staged_by_index(client: TestClient, redis_client: redis.Redis) -> None:
    message = payload_message([event(1), event(2, "TypingStarted", x_unknown=1)])
    assert client.post("/push", content=body(message, encoding="string")).json() == {"status": "queued"}
    staged = redis_client.hgetall(keys.staged("s1"))
    assert sorted(staged) == [b"1", b"2"]
    assert b'"x_unknown": 1' in staged[b"2"]  # the event's bytes exactly as GMS sent them
    again = client.post("/push", content=body(message))
    assert again.json() == {"status": "duplicate"}


def test_payload_without_chat_id_uses_the_device(client: TestClient, redis_client: redis.Redis) -> None:
    assert client.post("/push", content=body(payload_message([event(1)], chat_id=None))).status_code == 200
    assert redis_client.hexists(keys.staged("d1"), "1")


def test_pushes_for_an_ended_chat_are_acknowledged_and_ignored(
    client: TestClient, redis_client: redis.Redis
) -> None:
    redis_client.set(keys.ended("s1"), "chatEnded")
    assert client.post("/push", content=body(trigger_message(3))).json() == {"status": "ended"}
    assert redis_client.zcard(keys.DIRTY) == 0


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[]", "invalid_push"),
        (b'{"message": "x"}', "invalid_push"),
        (b'{"deviceId": 5, "message": "x"}', "invalid_push"),
        (b'{"deviceId": "", "message": "x"}', "invalid_push"),
        (b'{"deviceId": "d", "message": 12}', "invalid_push"),
        (body(trigger_message("abc")), "invalid_push"),
        (body(trigger_message(-2)), "invalid_push"),
        (body(trigger_message(2**40)), "invalid_push"),
        (body({"messages": [{"type": "Message", "text": "no index"}]}), "invalid_push"),
        (b'{"deviceId": "d", "message": ' + b"[" * 10000 + b"]" * 10000 + b"}", "invalid_json"),
    ],
)
def test_bad_input_is_400_and_nothing_is_stored(
    client: TestClient, redis_client: redis.Redis, content: bytes, code: str
) -> None:
    reply = client.post("/push", content=content)
    assert reply.status_code == 400
    assert reply.json()["error"] == code
    assert reply.json()["detail"]
    assert stored_keys(redis_client) == set()


def test_get_is_405(client: TestClient) -> None:
    reply = client.get("/push")
    assert reply.status_code == 405
    assert reply.json()["error"] == "method_not_allowed"


def test_too_large_is_413_by_header_and_by_stream(
    make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    client = make_client(PUSH_MAX_BYTES="200")
    big = body(payload_message([event(1, text="x" * 300)]))
    assert client.post("/push", content=big).status_code == 413

    def chunks() -> Iterator[bytes]:
        yield big[:100]
        yield big[100:]

    reply = client.post("/push", content=chunks())  # no content-length: chunked
    assert reply.status_code == 413
    assert reply.json()["error"] == "payload_too_large"
    assert stored_keys(redis_client) == set()


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/push?token=s3cret", {}),
        ("/push", {"authorization": "Bearer s3cret"}),
        ("/push", {"authorization": "Basic " + base64.b64encode(b"gms:s3cret").decode()}),
    ],
)
def test_push_token_accepted_in_query_bearer_or_basic(
    make_client: ClientFactory, url: str, headers: dict[str, str]
) -> None:
    client = make_client(PUSH_TOKEN="s3cret")
    assert client.post(url, content=body(trigger_message(1)), headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/push", {}),
        ("/push?token=wrong", {}),
        ("/push", {"authorization": "Bearer wrong"}),
        ("/push", {"authorization": "Basic !!!"}),
    ],
)
def test_missing_or_wrong_push_token_is_401(
    make_client: ClientFactory, redis_client: redis.Redis, url: str, headers: dict[str, str]
) -> None:
    client = make_client(PUSH_TOKEN="s3cret")
    reply = client.post(url, content=body(trigger_message(1)), headers=headers)
    assert reply.status_code == 401
    assert reply.json()["error"] == "unauthorized"
    assert "s3cret" not in reply.text
    assert stored_keys(redis_client) == set()


def test_repeated_auth_failures_are_throttled(make_client: ClientFactory) -> None:
    client = make_client(PUSH_TOKEN="s3cret")
    codes = [client.post("/push?token=bad", content=b"{}").status_code for _ in range(25)]
    assert codes[:20] == [401] * 20
    assert codes[20:] == [429] * 5


def test_job_ids_carry_128_random_bits_per_process(
    make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    """In containers every process is pid 1: ids must not rest on the pid or a few random bytes, or two
    processes' ids collide over days (a webhook delivery id collision sends another chat's body)."""
    queue = Queue(keys.DRAIN_QUEUE, connection=redis_client, serializer=JSONSerializer)
    prefixes = []
    for _ in range(2):  # two ingress processes' worth of stores
        client = make_client()
        client.post("/push", content=body(trigger_message(1)))
        [job_id] = queue.get_job_ids()
        kind, prefix, counter = job_id.split("-")
        assert (kind, len(prefix), counter) == ("drain", 32, "0")
        int(prefix, 16)
        prefixes.append(prefix)
        redis_client.flushall()
    assert prefixes[0] != prefixes[1]
