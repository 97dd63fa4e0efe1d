"""Reliable delivery in the cases Chat Server makes hard: quiet chats outliving their credentials, a
transcript of 20,000 events in one Refresh, a slow GMS, and aliases that change. Real worker processes,
a real Redis, the simulator's Chat API and push sender, a real webhook receiver."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis

from shared import keys
from shared.redis_server import RedisServer
from simulator.receiver import WebhookReceiver
from simulator.sender import PushSender
from simulator.server import ChatServer
from simulator.transcript import Chat, EventSpec
from tests.e2e.checks import stream
from tests.processes import RelayProcesses, relay_env, relay_processes, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

API_TOKEN = "e2e-api-token"
SERVICE = "customer-support"


@contextmanager
def relay_with_sink(
    redis_server: RedisServer, chat_server: ChatServer, workers: int = 2, **env: str
) -> Iterator[tuple[RelayProcesses, WebhookReceiver]]:
    with WebhookReceiver() as receiver:
        settings = relay_env(
            REDIS_URL=redis_server.url,
            GMS_URL=chat_server.base_url,
            API_TOKEN=API_TOKEN,
            WEBHOOK_URL=receiver.url,
            **env,
        )
        with relay_processes(settings, workers=workers) as relay:
            yield relay, receiver


def register(relay: RelayProcesses, chat: Chat, alias: str | None = None) -> None:
    body = {
        "deviceId": chat.device_id,
        "userId": chat.user_id,
        "secureKey": chat.secure_key,
        "alias": alias or chat.alias,
        "service": SERVICE,
    }
    reply = httpx.put(
        f"{relay.base_url}/sessions/{chat.chat_id}",
        json=body,
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=10,
    )
    assert reply.status_code == 204, reply.text


def indexes(client: redis.Redis, chat: Chat) -> list[int]:
    return [int(e["index"]) for e in stream(client, chat.device_id) if "index" in e]


def webhook_indexes(receiver: WebhookReceiver, session_id: str) -> list[int]:
    """Every (sessionId, index) the sink accepted, in the order it accepted them, one per delivery id."""
    seen: set[str] = set()
    found: list[int] = []
    for delivery in receiver.accepted():
        if delivery.webhook_id in seen:
            continue  # a legitimate retry repeats its id
        seen.add(delivery.webhook_id)
        payload = delivery.json
        if payload["type"] == "chat.events" and payload["data"]["sessionId"] == session_id:
            found += [int(e["index"]) for e in payload["data"]["events"]]
    return found


def agent_says(chat_server: ChatServer, chat: Chat, text: str) -> None:
    chat_server.store.append(chat.chat_id, [EventSpec("Message", "agent", text, {"messageType": "text"})])


def test_a_chat_quiet_past_its_credentials_is_parked_then_resumes_from_its_cursor(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    """SESSION_IDLE_TTL_S expires only the credentials: the chat's next trigger parks it with one
    `chat.credentials_required` (stream and webhook); PUT /sessions resumes it from its cursor, so no
    event is delivered twice or lost."""
    store = chat_server.store
    chat = store.create_chat(service=SERVICE, nickname="Kim", device_id="dev-quiet", mode="reliable")
    with (
        relay_with_sink(redis_server, chat_server, SESSION_IDLE_TTL_S="2", CHAT_STATE_TTL_S="600") as (
            relay,
            receiver,
        ),
        PushSender(f"{relay.base_url}/push", store, resend_delay_s=60) as sender,
    ):
        register(relay, chat)
        agent_says(chat_server, chat, "hello")
        agent_says(chat_server, chat, "anything else?")
        wait_for(lambda: indexes(redis_client, chat) == [1, 2, 3])
        # Quiet for longer than the credentials live; the chat's state (cursor, alias) stays.
        wait_for(lambda: not redis_client.exists(keys.credentials(chat.chat_id)), timeout_s=10)
        assert redis_client.hget(keys.session(chat.chat_id), "cursor") == b"4"
        agent_says(chat_server, chat, "are you still there?")
        wait_for(
            lambda: any(
                e["type"] == "chat.credentials_required" for e in stream(redis_client, chat.device_id)
            )
        )
        agent_says(chat_server, chat, "hello?")  # parked already: no second notice
        wait_for(lambda: sender.idle(include_pending=False))
        notices = [
            e for e in stream(redis_client, chat.device_id) if e["type"] == "chat.credentials_required"
        ]
        assert len(notices) == 1
        assert json.loads(notices[0]["data"]) == {"deviceId": chat.device_id, "sessionId": chat.chat_id}
        assert notices[0]["sessionId"] == chat.chat_id and "index" not in notices[0]

        def notified() -> bool:
            return any(d.json["type"] == "chat.credentials_required" for d in receiver.accepted())

        wait_for(notified)
        metrics = httpx.get(f"{relay.base_url}/metrics").text
        assert "gms_relay_chats_parked 1\n" in metrics
        register(relay, chat, alias=chat.aliases[0])  # what the app kept from Request Chat
        wait_for(lambda: indexes(redis_client, chat) == [1, 2, 3, 4, 5])
        wait_for(lambda: webhook_indexes(receiver, chat.chat_id) == [1, 2, 3, 4, 5])
        assert "gms_relay_chats_parked 0\n" in httpx.get(f"{relay.base_url}/metrics").text
    refreshed_from = [
        r.transcript_position for r in chat_server.log.records(chat.chat_id) if r.outcome == "ok"
    ]
    assert 1 not in refreshed_from[1:]  # only the first Refresh started from the beginning


def test_a_transcript_of_20000_events_in_one_refresh_reaches_every_sink_whole(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    """A chat registered late: one Refresh returns 20,000 events. They are committed in bounded
    chunks (a single script call would fail mid-way after writing the stream), so the stream and the
    webhook sink both get all of them, in order, once."""
    store = chat_server.store
    chat = store.create_chat(service=SERVICE, nickname="Kim", device_id="dev-long", mode="reliable")
    store.append(
        chat.chat_id,
        [EventSpec("Message", "agent", f"line {i}", {"messageType": "text"}) for i in range(19_999)],
        notify=False,
    )
    env = {"STREAM_MAXLEN": "30000", "REFRESH_TIMEOUT_MS": "5000", "LEASE_TTL_MS": "12000"}
    with relay_with_sink(redis_server, chat_server, workers=1, **env) as (relay, receiver):
        register(relay, chat)
        wait_for(lambda: len(indexes(redis_client, chat)) >= 20_000, timeout_s=120)
        assert indexes(redis_client, chat) == list(range(1, 20_001))
        wait_for(lambda: len(webhook_indexes(receiver, chat.chat_id)) >= 20_000, timeout_s=120)
        assert webhook_indexes(receiver, chat.chat_id) == list(range(1, 20_001))
        assert redis_client.hget(keys.session(chat.chat_id), "cursor") == b"20001"
        assert int(redis_client.hget(keys.COUNTERS, "commit_fenced") or 0) == 0
    assert [r.outcome for r in chat_server.log.records(chat.chat_id)] == ["ok"]


def test_a_slow_gms_never_has_two_workers_refreshing_one_chat(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    """GMS answering later than REFRESH_TIMEOUT_MS: every Refresh ends at its deadline, inside the lease,
    so no commit is ever fenced; the chats are retried and get everything once GMS is fast again."""
    store = chat_server.store
    chats = [
        store.create_chat(service=SERVICE, nickname="Kim", device_id=f"dev-slow-{i}", mode="reliable")
        for i in range(4)
    ]
    chat_server.faults.refresh_delay_ms = 700  # each Refresh times out at 400 ms
    with (
        relay_with_sink(redis_server, chat_server) as (relay, _receiver),
        PushSender(f"{relay.base_url}/push", store, resend_delay_s=60),
    ):
        for chat in chats:
            register(relay, chat)
            agent_says(chat_server, chat, "hi")
        wait_for(lambda: int(redis_client.hget(keys.COUNTERS, "refresh_retried") or 0) >= 8, timeout_s=30)
        chat_server.faults.refresh_delay_ms = 0
        for chat in chats:
            wait_for(lambda chat=chat: indexes(redis_client, chat) == [1, 2])  # type: ignore[misc]
        assert int(redis_client.hget(keys.COUNTERS, "commit_fenced") or 0) == 0


def test_repeated_trigger_keys_never_wait_for_a_resend(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    """Bursts of events whose triggers all carry the same (notify-position, attempt 0): every one is
    followed by a Refresh that started after it arrived, so Chat Server never has to resend, and
    every event is delivered once."""
    store = chat_server.store
    chats = [
        store.create_chat(service=SERVICE, nickname="Kim", device_id=f"dev-burst-{i}", mode="reliable")
        for i in range(6)
    ]
    with (
        relay_with_sink(redis_server, chat_server) as (relay, _receiver),
        PushSender(f"{relay.base_url}/push", store, resend_delay_s=5, resend_attempts=3) as sender,
    ):
        for chat in chats:
            register(relay, chat)
        for round_ in range(8):
            for chat in chats:
                store.append(
                    chat.chat_id,
                    [
                        EventSpec("Message", "agent", f"{round_}-{i}", {"messageType": "text"})
                        for i in range(3)
                    ],
                )
        for chat in chats:
            wait_for(lambda chat=chat: indexes(redis_client, chat) == list(range(1, 26)))  # type: ignore[misc]
        assert sender.wait_idle(30)  # every trigger acknowledged by a Refresh
        records = [r for r in sender.records() if r.kind == "trigger"]
    repeated = Counter((r.chat_id, r.position) for r in records if r.attempt == 0)
    assert max(repeated.values()) > 1  # the case under test: fresh triggers sharing one key
    assert [r for r in records if r.resend] == []


def test_a_trigger_with_a_new_alias_rescues_a_refresh_refused_for_the_old_one(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    """The session moves to another Chat Server (a new alias) just as the relay refreshes with the old
    one: GMS refuses it like an ended chat, while the trigger carrying the new `app-dbid` is already on
    its way. The relay does not end the chat: it refreshes again with the newer alias."""
    store = chat_server.store
    chat = store.create_chat(
        service=SERVICE, nickname="Kim", device_id="dev-moved", mode="reliable", flex_app_dbid=True
    )
    with (
        relay_with_sink(redis_server, chat_server, REFRESH_TIMEOUT_MS="3000", LEASE_TTL_MS="6400") as (
            relay,
            _receiver,
        ),
        PushSender(f"{relay.base_url}/push", store, resend_delay_s=60),
    ):
        register(relay, chat)
        wait_for(lambda: indexes(redis_client, chat) == [1])
        store.switch_alias(chat.chat_id)  # nothing tells the relay yet
        chat_server.faults.refresh_delay_ms = 300  # the refusal takes a while to come back
        wakeup = {"deviceId": chat.device_id, "message": "dummy message"}  # refresh with the old alias
        assert httpx.post(f"{relay.base_url}/push", json=wakeup).json() == {"status": "queued"}
        wait_for(lambda: redis_client.exists(keys.lease(chat.chat_id)) == 1, step_s=0.005)
        agent_says(chat_server, chat, "hello")  # its trigger carries the new app-dbid
        wait_for(lambda: indexes(redis_client, chat) == [1, 2])
        chat_server.faults.refresh_delay_ms = 0
    outcomes = [r.outcome for r in chat_server.log.records(chat.chat_id)]
    assert "alias_error" in outcomes and outcomes[-1] == "ok"
    assert not redis_client.exists(keys.ended(chat.chat_id))


def test_an_alias_change_lost_with_a_timed_out_refresh_is_repaired_by_the_next_trigger(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    """A Refresh that timed out on our side reached GMS and changed the alias: the relay's retries use
    the old alias and are refused. The chat is not ended; the next trigger's `app-dbid` gives the new
    alias and the relay fetches from its cursor, the lost answer's events included."""
    store = chat_server.store
    chat = store.create_chat(
        service=SERVICE, nickname="Kim", device_id="dev-lost", mode="reliable", flex_app_dbid=True
    )
    with (
        relay_with_sink(redis_server, chat_server) as (relay, _receiver),
        PushSender(f"{relay.base_url}/push", store, resend_delay_s=60),
    ):
        register(relay, chat)
        wait_for(lambda: indexes(redis_client, chat) == [1])
        faults = chat_server.faults
        faults.refresh_delay_ms, faults.alias_change = 700, 1.0  # answered after our 400 ms deadline
        agent_says(chat_server, chat, "hello")
        wait_for(lambda: len(store.get(chat.chat_id, with_events=False).aliases) > 1)  # type: ignore[union-attr]
        faults.refresh_delay_ms, faults.alias_change = 0, 0.0
        wait_for(lambda: chat_server.log.count(chat.chat_id, "alias_error") > 0)  # retries: old alias
        agent_says(chat_server, chat, "are you there?")
        wait_for(lambda: indexes(redis_client, chat) == [1, 2, 3])
    assert not redis_client.exists(keys.ended(chat.chat_id))
    assert chat_server.log.records(chat.chat_id)[-1].alias_kind == "current"
