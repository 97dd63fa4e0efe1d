"""Payload-mode and wake-up pushes through the real ingress and an RQ SimpleWorker."""

from __future__ import annotations

import json

import pytest
import redis
from starlette.testclient import TestClient

from shared import keys
from tests.pushes import body, event, payload_message, trigger_message
from tests.workers.conftest import Burst, BurstUntil, stream_entries


def test_payload_events_reach_the_stream_in_order_once(
    ingress: TestClient, burst: Burst, redis_client: redis.Redis
) -> None:
    ingress.post("/push", content=body(payload_message([event(1, "ParticipantJoined"), event(2)])))
    ingress.post("/push", content=body(payload_message([event(2), event(3, "FutureType", x=1)])))
    burst()
    entries = stream_entries(redis_client, "d1")
    assert [(e["type"], e["index"], e["sessionId"]) for e in entries] == [
        ("ParticipantJoined", "1", "s1"),
        ("Message", "2", "s1"),
        ("FutureType", "3", "s1"),
    ]
    assert json.loads(entries[2]["data"])["x"] == 1
    ingress.post("/push", content=body(payload_message([event(3), event(4)], ended=True)))
    burst()
    entries = stream_entries(redis_client, "d1")
    assert [e["type"] for e in entries[3:]] == ["Message", "chat.ended"]
    assert json.loads(entries[-1]["data"]) == {"deviceId": "d1", "sessionId": "s1", "reason": "chatEnded"}
    assert not redis_client.exists(keys.session("s1"), keys.staged("s1"))


# The gap wait must outlast the first burst's drain, which keeps polling for DRAIN_LINGER_S (0.15 s)
# after its last commit: with 200 ms, a 50 ms stall on a loaded machine let that same drain skip the gap.
@pytest.mark.parametrize("relay_env", [{"GMS_URL": "http://127.0.0.1:9", "PAYLOAD_GAP_WAIT_MS": "1000"}])
def test_a_gap_holds_later_events_back_then_is_skipped(
    ingress: TestClient, burst: Burst, burst_until: BurstUntil, redis_client: redis.Redis
) -> None:
    ingress.post("/push", content=body(payload_message([event(1)])))
    ingress.post("/push", content=body(payload_message([event(3)])))
    burst()
    assert [e["index"] for e in stream_entries(redis_client, "d1")] == ["1"]  # 3 waits for 2
    burst_until(lambda: len(stream_entries(redis_client, "d1")) == 2)  # the gap wait ends: skip 2
    assert [e["index"] for e in stream_entries(redis_client, "d1")] == ["1", "3"]
    assert redis_client.hget(keys.session("s1"), "cursor") == b"4"


def test_gap_filled_in_time_keeps_order(ingress: TestClient, burst: Burst, redis_client: redis.Redis) -> None:
    ingress.post("/push", content=body(payload_message([event(1), event(3)])))
    ingress.post("/push", content=body(payload_message([event(2)])))
    burst()
    assert [e["index"] for e in stream_entries(redis_client, "d1")] == ["1", "2", "3"]


def test_removed_without_credentials_ends_the_chat_at_once(
    ingress: TestClient, burst: Burst, redis_client: redis.Redis
) -> None:
    ingress.post("/push", content=body(trigger_message(-1)))
    burst()
    [ended] = stream_entries(redis_client, "d1")
    assert ended["type"] == "chat.ended"
    assert json.loads(ended["data"])["reason"] == "removed"
    assert redis_client.get(keys.ended("s1")) == b"removed"
    assert not redis_client.exists(keys.session("s1"))
    assert ingress.post("/push", content=body(trigger_message(-1))).json() == {"status": "ended"}
    burst()
    assert len(stream_entries(redis_client, "d1")) == 1  # chat.ended once


def test_wakeup_without_a_chat_emits_device_wakeup(
    ingress: TestClient, burst: Burst, redis_client: redis.Redis
) -> None:
    ingress.post("/push", content=body("dummy message", device_id="d7"))
    burst()
    [entry] = stream_entries(redis_client, "d7")
    assert entry["type"] == "device.wakeup"
    assert json.loads(entry["data"]) == {"deviceId": "d7", "text": "dummy message"}
    assert redis_client.llen(keys.WAKEUPS) == 0
