"""The webhook sink through real worker processes and a real receiver on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import threading
from collections import defaultdict
from collections.abc import Iterator

import httpx
import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from gms_relay.stack import relay_command
from shared import keys
from shared.redis_server import RedisServer
from shared.settings import Settings
from simulator.receiver import Delivery, WebhookReceiver
from tests.processes import RelayProcesses, relay_env, relay_processes, wait_for
from tests.pushes import body, event, payload_message

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

CONCURRENCY = Settings().webhook_concurrency
DOWN_AFTER = Settings().webhook_sink_down_after


def verified(delivery: Delivery) -> Delivery:
    """Check a delivery as a receiver would, with the Standard Webhooks reference library (code nobody
    here wrote): signature over id, timestamp and the exact body, and a timestamp near now."""
    headers = {
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": delivery.timestamp,
        "webhook-signature": delivery.signature,
    }
    Webhook(SECRET).verify(delivery.body, headers)  # raises WebhookVerificationError
    return delivery


def post(relay: RelayProcesses, content: bytes) -> None:
    reply = httpx.post(f"{relay.base_url}/push", content=content)
    assert reply.status_code == 200, reply.text


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(seed=1) as server:
        yield server


def env_for(redis_server: RedisServer, *urls: str, **extra: str) -> dict[str, str]:
    return relay_env(
        REDIS_URL=redis_server.url,
        GMS_URL="http://127.0.0.1:9",
        WEBHOOK_URL=",".join(urls),
        WEBHOOK_SECRET=SECRET,
        **extra,
    )


def by_chat(deliveries: list[Delivery]) -> dict[str, list[Delivery]]:
    """Accepted deliveries per chat, in arrival order, first arrival of each webhook-id only."""
    chats: dict[str, list[Delivery]] = defaultdict(list)
    seen: set[str] = set()
    for delivery in deliveries:
        if delivery.webhook_id not in seen:
            seen.add(verified(delivery).webhook_id)
            data = delivery.json["data"]
            chats[data.get("sessionId") or "~" + data["deviceId"]].append(delivery)
    return chats


def ended_chats(receiver: WebhookReceiver) -> set[str]:
    return {d.json["data"]["sessionId"] for d in receiver.accepted() if d.json["type"] == "chat.ended"}


class HeldReceiver(WebhookReceiver):
    """A receiver as slow as a test needs: every webhook request waits until `release` is set."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.release = threading.Event()
        self.holding = 0  # requests waiting right now (changed on the server's event loop only)

    def app(self) -> Starlette:
        app = super().app()
        app.add_middleware(_Hold, receiver=self)
        return app


class _Hold:
    def __init__(self, app: ASGIApp, receiver: HeldReceiver) -> None:
        self.app = app
        self.receiver = receiver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/webhook":
            self.receiver.holding += 1
            try:
                while not self.receiver.release.is_set():
                    await asyncio.sleep(0.01)
            finally:
                self.receiver.holding -= 1
        await self.app(scope, receive, send)


def test_deliveries_are_signed_and_shaped_per_contract(
    redis_server: RedisServer, redis_client: redis.Redis, receiver: WebhookReceiver
) -> None:
    sent = [event(1, "ParticipantJoined"), event(2, x_future={"a": 1}), event(3)]
    with relay_processes(env_for(redis_server, receiver.url), workers=1) as relay:
        post(relay, body(payload_message(sent[:2])))
        post(relay, body(payload_message(sent[2:], ended=True)))
        post(relay, body("dummy message", device_id="lonely"))
        wait_for(
            lambda: (
                "s1" in ended_chats(receiver)
                and any(d.json["type"] == "device.wakeup" for d in receiver.accepted())
            )
        )
    deliveries = receiver.accepted()
    for delivery in deliveries:
        verified(delivery)
        tampered = Delivery(**{**vars(delivery), "body": delivery.body + b" "})
        with pytest.raises(WebhookVerificationError):
            verified(tampered)
        assert delivery.timestamp.isdigit()
    chat = by_chat(deliveries)["s1"]
    events = [e for d in chat if d.json["type"] == "chat.events" for e in d.json["data"]["events"]]
    assert events == sent  # every member kept, in order
    first = chat[0].json
    assert first["data"]["deviceId"] == "d1" and first["data"]["nextPosition"] >= 3
    assert first["timestamp"].endswith("Z")
    assert chat[-1].json["data"] == {"deviceId": "d1", "sessionId": "s1", "reason": "chatEnded"}
    [wakeup] = [d.json for d in by_chat(deliveries)["~lonely"]]  # a retry repeats the same webhook-id
    assert wakeup["type"] == "device.wakeup"
    assert wakeup["data"] == {"deviceId": "lonely", "text": "dummy message"}


def test_order_per_chat_survives_failures_and_an_outage(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    chats, per_chat = 16, 12
    receiver = WebhookReceiver(fail_rate=0.3, seed=3)
    receiver.start()
    env = env_for(
        redis_server, receiver.url, WEBHOOK_RETRY_SCHEDULE_S="1,1,1,1,1,1,1,1,1,1,1,1", WEBHOOK_BATCH_MAX="4"
    )
    try:
        with relay_processes(env, workers=2) as relay:
            for start in range(1, per_chat + 1, 3):
                for chat in range(chats):
                    batch = [event(i) for i in range(start, min(start + 3, per_chat + 1))]
                    ended = start + 3 > per_chat
                    post(relay, body(payload_message(batch, chat_id=f"c{chat}", ended=ended), f"d{chat}"))
                if start == 4:
                    wait_for(lambda: len(receiver.accepted()) > 10)
                    receiver.stop()  # down entirely for a while
                    wait_for(lambda: redis_client.hget(keys.COUNTERS, "webhook_retried") is not None)
                    receiver.start()
            wait_for(lambda: len(ended_chats(receiver)) == chats, timeout_s=120)
    finally:
        receiver.stop()
    accepted = receiver.accepted()
    ids_by_event: dict[tuple[str, int], set[str]] = defaultdict(set)
    bodies_by_id: dict[str, set[bytes]] = defaultdict(set)
    for delivery in accepted:
        bodies_by_id[delivery.webhook_id].add(delivery.body)
        for e in delivery.json["data"].get("events", []):
            ids_by_event[(delivery.json["data"]["sessionId"], e["index"])].add(delivery.webhook_id)
    assert all(len(ids) == 1 for ids in ids_by_event.values())  # duplicates only share a webhook-id
    assert all(len(bodies) == 1 for bodies in bodies_by_id.values())  # a retry sends the same bytes
    for session_id, deliveries in by_chat(accepted).items():
        indexes = [e["index"] for d in deliveries for e in d.json["data"].get("events", [])]
        assert indexes == list(range(1, per_chat + 1)), session_id
        assert [d.json["type"] for d in deliveries][-1] == "chat.ended"
    assert any(d.status != 200 for d in receiver.deliveries)


def test_dead_letter_then_requeue_delivers_with_the_same_id(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    receiver = WebhookReceiver(fail_rate=1.0)
    receiver.start()
    env = env_for(redis_server, receiver.url, WEBHOOK_RETRY_SCHEDULE_S="1")
    registry = FailedJobRegistry(keys.WEBHOOK_QUEUE, connection=redis_client, serializer=JSONSerializer)
    try:
        with relay_processes(env, workers=1) as relay:
            post(relay, body(payload_message([event(1)])))
            wait_for(lambda: len(registry.get_job_ids()) == 1)
            [job_id] = registry.get_job_ids()
            job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
            result = job.latest_result()
            assert result is not None and "HTTP 500" in (result.exc_string or "")
            assert {d.webhook_id for d in receiver.deliveries} == {job_id}  # first try + one retry
            assert len(receiver.deliveries) == 2
            post(relay, body(payload_message([event(2)])))  # waits behind the dead letter
            wait_for(lambda: redis_client.llen(keys.outbox(0, "s1")) == 1)
            receiver.fail_rate = 0.0
            requeue = subprocess.run(relay_command("requeue-failed", "--all"), env=env, capture_output=True)
            assert requeue.returncode == 0, requeue.stderr
            wait_for(lambda: len(receiver.accepted()) == 2)
    finally:
        receiver.stop()
    first, second = receiver.accepted()
    assert first.webhook_id == job_id
    assert [e["index"] for e in first.json["data"]["events"]] == [1]
    assert [e["index"] for e in second.json["data"]["events"]] == [2]
    assert registry.get_job_ids() == []


def test_skip_failed_releases_the_chat(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    receiver = WebhookReceiver(fail_rate=1.0)
    receiver.start()
    env = env_for(redis_server, receiver.url, WEBHOOK_RETRY_SCHEDULE_S="1")
    registry = FailedJobRegistry(keys.WEBHOOK_QUEUE, connection=redis_client, serializer=JSONSerializer)
    try:
        with relay_processes(env, workers=1) as relay:
            post(relay, body(payload_message([event(1)])))
            wait_for(lambda: len(registry.get_job_ids()) == 1)
            [job_id] = registry.get_job_ids()
            # Posted only now: two payloads claimed together would share one delivery.
            post(relay, body(payload_message([event(2)])))  # waits behind the dead letter
            wait_for(lambda: redis_client.llen(keys.outbox(0, "s1")) == 1)
            receiver.fail_rate = 0.0
            skip = subprocess.run(relay_command("skip-failed", job_id), env=env, capture_output=True)
            assert skip.returncode == 0, skip.stderr
            wait_for(lambda: len(receiver.accepted()) == 1)
    finally:
        receiver.stop()
    [delivered] = receiver.accepted()
    assert [e["index"] for e in delivered.json["data"]["events"]] == [2]


def test_a_slow_endpoint_does_not_delay_another(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    # The slow endpoint answers nothing until the fast one has every chat, so "the fast one finished
    # first" does not depend on how fast a loaded machine runs (a fixed delay did, with a margin of
    # seconds); its requests outlast the wait, so they hold their slots rather than time out.
    workers = 2
    slow, fast = HeldReceiver(), WebhookReceiver()
    slow.start()
    fast.start()
    env = env_for(redis_server, slow.url, fast.url, WEBHOOK_TIMEOUT_MS="170000")
    try:
        with relay_processes(env, workers=workers) as relay:
            try:
                for chat in range(20):
                    post(relay, body(payload_message([event(1)], chat_id=f"c{chat}"), f"d{chat}"))
                # Every slot the slow endpoint can get, in every worker, is now taken by a stalled request.
                wait_for(lambda: slow.holding == workers * CONCURRENCY)
                for chat in range(20):
                    post(relay, body(payload_message([event(2)], chat_id=f"c{chat}", ended=True), f"d{chat}"))
                wait_for(lambda: len(ended_chats(fast)) == 20)
                assert slow.holding == workers * CONCURRENCY and slow.deliveries == []
            finally:
                slow.release.set()
            wait_for(lambda: len(ended_chats(slow)) == 20, timeout_s=60)
    finally:
        slow.stop()
        fast.stop()
    assert json.loads(fast.accepted()[0].body)["type"] == "chat.events"


def chats_delivered(receiver: WebhookReceiver, sessions: set[str]) -> bool:
    return {d.json["data"]["sessionId"] for d in receiver.accepted()} >= sessions


def test_a_sink_that_is_down_is_probed_and_every_chat_resumes_at_once(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Every delivery fails: after WEBHOOK_SINK_DOWN_AFTER in a row the sink is down and only a probe a second
    is sent. The retries are scheduled 30 s out, yet once the receiver is back every chat is delivered
    within seconds: the probe's success resumes them all, the backoff they reached does not count."""
    receiver = WebhookReceiver(status=503)
    sessions = {f"down-{n}" for n in range(DOWN_AFTER + 2)}
    with (
        receiver,
        relay_processes(
            env_for(redis_server, receiver.url, WEBHOOK_RETRY_SCHEDULE_S="30,30"), workers=2
        ) as relay,
    ):
        for session in sorted(sessions):
            post(relay, body(payload_message([event(1)], chat_id=session), device_id=f"dev-{session}"))
        wait_for(lambda: int(redis_client.hget(keys.COUNTERS, "webhook_sink_down") or 0) == 1)
        receiver.status = None
        wait_for(lambda: chats_delivered(receiver, sessions), timeout_s=15)  # well inside the 30 s backoff
        assert int(redis_client.hget(keys.COUNTERS, "webhook_sink_up") or 0) == 1
    attempts = len(receiver.deliveries) - len(receiver.accepted())
    assert attempts < DOWN_AFTER + 15  # the failures in a row, then probes only (about one a second)
    assert receiver.overlaps == []


def test_retry_after_on_503_is_honoured(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    receiver = WebhookReceiver(status=503, retry_after="2")
    with (
        receiver,
        relay_processes(
            env_for(redis_server, receiver.url, WEBHOOK_RETRY_SCHEDULE_S="0.25"), workers=1
        ) as relay,
    ):
        post(relay, body(payload_message([event(1)])))
        wait_for(lambda: len(receiver.deliveries) == 1)
        receiver.status = None
        wait_for(lambda: len(receiver.accepted()) == 1)
    first, second = receiver.deliveries
    assert first.webhook_id == second.webhook_id
    assert second.received_at - first.received_at >= 2 * 0.8  # not the schedule's 0.25 s (jitter -20%)


def test_410_gone_dead_letters_and_disables_the_sink_until_requeued(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    receiver = WebhookReceiver(status=410)
    env = env_for(redis_server, receiver.url)
    registry = FailedJobRegistry(keys.WEBHOOK_QUEUE, connection=redis_client, serializer=JSONSerializer)
    with receiver, relay_processes(env, workers=1) as relay:
        post(relay, body(payload_message([event(1)], chat_id="gone-1"), device_id="dev-1"))
        wait_for(lambda: len(registry.get_job_ids()) == 1)
        post(relay, body(payload_message([event(1)], chat_id="gone-2"), device_id="dev-2"))

        def parked() -> bool:  # gone-2's delivery waits on the disabled sink, never sent
            entries: list[tuple[bytes, float]] = redis_client.zrange(keys.DELIVERIES, 0, -1, withscores=True)  # type: ignore[assignment]
            scores = [score for _, score in entries]
            return scores == [keys.SINK_PARKED]

        wait_for(parked)
        assert len(receiver.deliveries) == 1  # nothing more was sent to the endpoint
        assert int(redis_client.hget(keys.COUNTERS, "webhook_sink_disabled") or 0) == 1
        receiver.status = None
        requeue = subprocess.run(relay_command("requeue-failed", "--all"), env=env, capture_output=True)
        assert requeue.returncode == 0, requeue.stderr
        wait_for(lambda: chats_delivered(receiver, {"gone-1", "gone-2"}))
    assert registry.get_job_ids() == []


def test_no_delivery_is_ever_in_flight_twice(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """A slow receiver and two worker processes whose drains and watchers all start deliveries: each
    webhook-id is received at most once at a time, and every delivery arrives."""
    receiver = WebhookReceiver(delay_s=0.05, fail_rate=0.2, seed=3)
    sessions = {f"busy-{n}" for n in range(30)}
    with (
        receiver,
        relay_processes(
            env_for(redis_server, receiver.url, WEBHOOK_RETRY_SCHEDULE_S="0.25,0.25,0.5,1,1,1,1,1,1,1"),
            workers=2,
        ) as relay,
    ):
        for index in (1, 2, 3):
            for session in sorted(sessions):
                content = body(payload_message([event(index)], chat_id=session), device_id=f"dev-{session}")
                post(relay, content)
        wait_for(
            lambda: all(
                sum(len(d.json["data"]["events"]) for d in by_chat(receiver.accepted())[s]) == 3
                for s in sessions
            )
        )
    assert receiver.overlaps == []
