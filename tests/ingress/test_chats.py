"""POST /chats and the chat actions against the simulator's Chat API over loopback and a real Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from starlette.testclient import TestClient

from ingress.rate_limit import TokenBuckets
from shared import device_tokens, keys
from shared.errors import ConfigError
from shared.redis_server import free_port
from shared.settings import Settings, load_settings
from simulator.server import ChatServer
from tests.conftest import ClientFactory, SettingsFactory
from workers.context import WorkerContext, set_context

SECRET = "device-token-secret-for-tests"
Response = Any  # httpx's or httpx2's, whichever TestClient uses
Start = Callable[..., TestClient]


@pytest.fixture
def relay(make_client: ClientFactory, chat_server: ChatServer) -> Start:
    """An ingress with GMS_URL at the simulator and DEVICE_TOKEN_SECRET set; env overrides ("" unsets)."""

    def start(**env: str) -> TestClient:
        base = {"GMS_URL": chat_server.base_url, "DEVICE_TOKEN_SECRET": SECRET}
        return make_client(**{k: v for k, v in {**base, **env}.items() if v})

    return start


def start_chat(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/chats", json={"nickname": "Kim", **body})
    assert response.status_code == 201, response.text
    started: dict[str, Any] = response.json()
    return started


def act(client: TestClient, started: dict[str, Any], action: str, **body: Any) -> Response:
    headers = {"Authorization": f"Bearer {started['token']}"}
    return client.post(f"/chats/{started['chatId']}/{action}", json=body or None, headers=headers)


def burst(settings: Settings, connection: redis.Redis) -> None:
    """One in-process RQ worker run until the queues are empty: the relay's Refresh, for real."""
    context = WorkerContext.build(settings)
    set_context(context)
    try:
        queues = [Queue(q, connection=connection, serializer=JSONSerializer) for q in keys.QUEUES]
        SimpleWorker(queues, connection=connection, serializer=JSONSerializer).work(burst=True)
    finally:
        set_context(None)
        context.close()


def stream(connection: redis.Redis, device_id: str) -> list[dict[str, str]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = connection.xrange(keys.stream(device_id))  # type: ignore[assignment]
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


def test_start_chat_requests_with_push_keys_and_registers_the_reply(
    relay: Start,
    make_settings: SettingsFactory,
    chat_server: ChatServer,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = relay()
    started = start_chat(client, subject="billing", userData={"orderId": "A-17"})
    assert act(client, started, "messages", text="hello").status_code == 204
    assert set(started) == {"chatId", "deviceId", "token", "eventsUrl"}
    device_id = started["deviceId"]
    assert device_id.startswith("dev-") and len(device_id) >= 36  # 192 random bits
    assert started["eventsUrl"] == f"/devices/{device_id}/events"
    assert device_tokens.verify(SECRET, started["token"], time.time()) == device_id
    chat = chat_server.store.get(started["chatId"])
    assert chat is not None and chat.service == "customer-support"
    assert chat.user_data == {
        "orderId": "A-17",
        "GCTI_Chat_PushSubscribe": "true",
        "GCTI_GMS_PushDeviceType": "customhttp",
        "GCTI_GMS_PushDeviceId": device_id,
        "GCTI_GMS_NotifyRequestor": "true",
        "GCTI_GMS_PushResend": "true",
    }
    assert (chat.device_id, chat.mode, chat.nicknames["customer"]) == (device_id, "reliable", "Kim")
    # Registered at once, as PUT /sessions would: the secure key stays in Redis, never in the reply.
    assert redis_client.hget(keys.session(chat.chat_id), "deviceId") == device_id.encode()
    assert redis_client.hgetall(keys.credentials(chat.chat_id)) == {
        b"userId": chat.user_id.encode(),
        b"secureKey": chat.secure_key.encode(),
    }
    assert chat.secure_key not in str(started)
    assert chat.secure_key not in caplog.text  # nor in any log line (httpx's included)
    # The chat's first Refresh works with those credentials and the alias of the reply.
    settings = make_settings(GMS_URL=chat_server.base_url)
    burst(settings, redis_client)
    records = chat_server.log.records(chat.chat_id)
    assert [(r.outcome, r.key_kind, r.alias_kind) for r in records][:1] == [("ok", "rest", "current")]
    assert stream(redis_client, device_id)[0]["type"] == "ParticipantJoined"


def test_payload_mode_service_and_node_group(relay: Start, chat_server: ChatServer) -> None:
    client = relay(GMS_NODE_GROUP="gms-cluster-a")
    started = start_chat(client, mode="payload", service="sales")
    chat = chat_server.store.get(started["chatId"])
    assert chat is not None and (chat.mode, chat.service) == ("payload", "sales")
    assert chat.user_data["GCTI_GMS_PushIncludePayload"] == "true"
    assert "GCTI_GMS_PushResend" not in chat.user_data
    assert chat.user_data["GCTI_GMS_NodeGroup"] == "gms-cluster-a"


def events(chat_server: ChatServer, chat_id: str) -> list[tuple[str, str, str | None]]:
    chat = chat_server.store.get(chat_id)
    assert chat is not None
    return [(e["type"], e["from"]["type"], e.get("text")) for e in chat.events]


def test_messages_typing_and_disconnect_are_forwarded(
    relay: Start, make_settings: SettingsFactory, chat_server: ChatServer, redis_client: redis.Redis
) -> None:
    client = relay()
    started = start_chat(client)
    chat_id = started["chatId"]
    assert act(client, started, "messages", text="Where is my parcel?\nOrder A-17").status_code == 204
    assert act(client, started, "typing").status_code == 204
    customer = [e for e in events(chat_server, chat_id) if e[1] == "Client"]
    assert customer == [
        ("ParticipantJoined", "Client", None),
        ("Message", "Client", "Where is my parcel?\nOrder A-17"),
        ("TypingStarted", "Client", None),
    ]
    assert act(client, started, "disconnect").status_code == 204
    chat = chat_server.store.get(chat_id)
    assert chat is not None and chat.ended
    # Once the relay has seen the end, GMS is not bothered again.
    burst(make_settings(GMS_URL=chat_server.base_url), redis_client)
    assert redis_client.exists(keys.ended(chat_id))
    response = act(client, started, "messages", text="late")
    assert (response.status_code, response.json()["error"]) == (409, "chat_ended")
    assert act(client, started, "disconnect").status_code == 409


def test_device_tokens_authorise_their_own_chat_only(relay: Start, chat_server: ChatServer) -> None:
    client = relay()
    mine, theirs = start_chat(client), start_chat(client)
    url = f"/chats/{theirs['chatId']}/messages"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {mine['token']}"}):
        response = client.post(url, json={"text": "hi"}, headers=headers)
        assert (response.status_code, response.json()["error"]) == (401, "unauthorized")
    expired, _ = device_tokens.issue(SECRET, theirs["deviceId"], 1, time.time() - 10)
    assert (
        client.post(url, json={"text": "hi"}, headers={"Authorization": f"Bearer {expired}"}).status_code
        == 401
    )
    for action in ("messages", "typing", "disconnect"):
        response = act(client, {**theirs, "token": mine["token"]}, action, text="hi")
        assert (response.status_code, response.json()["error"]) == (403, "forbidden")
    unknown = act(client, {**mine, "chatId": "NO-SUCH-CHAT"}, "messages", text="hi")
    assert unknown.status_code == 403  # the same answer: chat ids cannot be probed
    assert act(client, mine, "wave").status_code == 404
    assert [e[0] for e in events(chat_server, theirs["chatId"]) if e[1] == "Client"] == ["ParticipantJoined"]


def test_bad_bodies(relay: Start) -> None:
    client = relay()
    for body in (
        {},
        {"nickname": ""},
        {"nickname": "Kim", "mode": "wakeup"},
        {"nickname": "Kim", "service": "../admin"},
        {"nickname": "Kim", "userData": {"GCTI_GMS_PushDeviceId": "someone-else"}},
        {"nickname": "Kim", "userData": {"a]b": "x"}},
        {"nickname": "Kim", "userData": {"n": 1}},
        {"nickname": "Kim", "extra": True},
    ):
        response = client.post("/chats", json=body)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_push"), body
    assert client.post("/chats", content=b"{nope").status_code == 400
    assert client.post("/chats", json={"nickname": "x" * 20000}).status_code == 413
    started = start_chat(client)
    for text in ("", "   ", "x" * 5000):
        assert act(client, started, "messages", text=text).status_code == 400


def test_rate_limit_per_address(relay: Start) -> None:
    client = relay(CHAT_START_BURST="2", CHAT_START_RATE_PER_MIN="1")
    start_chat(client)
    start_chat(client)
    response = client.post("/chats", json={"nickname": "Kim"})
    assert (response.status_code, response.json()["error"]) == (429, "rate_limited")
    assert 1 <= int(response.headers["retry-after"]) <= 60


def test_chat_start_token_is_required_when_set(relay: Start) -> None:
    client = relay(CHAT_START_TOKEN="start-secret", CHAT_START_BURST="1")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = client.post("/chats", json={"nickname": "Kim"}, headers=headers)
        assert (response.status_code, response.json()["error"]) == (401, "unauthorized")
    for _ in range(3):  # a backend holding the token is not rate-limited per address
        good = client.post(
            "/chats", json={"nickname": "Kim"}, headers={"Authorization": "Bearer start-secret"}
        )
        assert good.status_code == 201


def test_not_found_without_device_token_secret(relay: Start, chat_server: ChatServer) -> None:
    client = relay(DEVICE_TOKEN_SECRET="")
    assert client.post("/chats", json={"nickname": "Kim"}).status_code == 404
    assert client.post("/chats/X/messages", json={"text": "hi"}).status_code == 404
    assert chat_server.store.chat_ids() == []


def test_gms_or_redis_unavailable(relay: Start, chat_server: ChatServer) -> None:
    client = relay(GMS_URL=f"http://127.0.0.1:{free_port()}", CHAT_API_TIMEOUT_MS="2000")
    response = client.post("/chats", json={"nickname": "Kim"})
    assert response.status_code == 502
    assert response.json() == {
        "error": "gms_unavailable",
        "detail": "GMS did not answer the chat request; try again",
    }
    # Redis gone after GMS created the chat: the chat is ended at GMS, not left to an agent alone.
    client = relay(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    response = client.post("/chats", json={"nickname": "Kim"})
    assert (response.status_code, response.json()["error"]) == (503, "redis_unavailable")
    (chat_id,) = chat_server.store.chat_ids()
    chat = chat_server.store.get(chat_id)
    assert chat is not None and chat.ended


def test_token_buckets_refill_and_stay_bounded() -> None:
    now = [0.0]
    buckets = TokenBuckets(2, 60, max_tracked=3, clock=lambda: now[0])
    assert [buckets.take("a"), buckets.take("a")] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(1.0)  # one a second
    now[0] += 0.5
    assert buckets.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert buckets.take("a") == 0.0
    for address in ("b", "c", "d", "e"):  # a spray of addresses: memory stays bounded
        assert buckets.take(address) == 0.0
    assert len(buckets._buckets) <= 3


def test_settings() -> None:
    settings = load_settings({"DEMO": "TRUE", "GMS_NODE_GROUP": "g", "CHAT_START_TOKEN": "t"})
    assert (settings.demo, settings.gms_node_group, settings.chat_start_token) == (True, "g", "t")
    assert load_settings({}).demo is False and load_settings({"DEMO": "false"}).demo is False
    with pytest.raises(ConfigError, match="DEMO must be true or false"):
        load_settings({"DEMO": "yes"})
    with pytest.raises(ConfigError, match="CHAT_START_BURST"):
        load_settings({"CHAT_START_BURST": "0"})
