"""Payload-mode and wake-up pushes through the real ingress and an RQ SimpleWorker."""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from typing import Any

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


# Issue 11, item 3: payload mode never drops events without waiting, and never answers 200 for an event
# that silently disappears.


def _indexes(client: redis.Redis, device_id: str = "d1") -> list[int]:
    return [int(e["index"]) for e in stream_entries(client, device_id) if e["type"] != "chat.ended"]


def _sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def _push(client: TestClient, *events: dict[str, Any]) -> Any:  # the test client's Response
    return client.post("/push", content=body(payload_message(list(events))))


def _status(client: TestClient, *events: dict[str, Any]) -> Any:
    return _push(client, *events).json()


# Timings: each wait ends well apart (>= 1.5 s) from the instants the test looks at, so that a loaded
# machine stalling a worker pass by a second cannot change what the test sees.
@pytest.mark.parametrize("relay_env", [{"GMS_URL": "http://127.0.0.1:9", "PAYLOAD_GAP_WAIT_MS": "4000"}])
def test_a_gap_left_when_an_older_one_partly_fills_gets_its_own_wait(
    ingress: TestClient, burst: Burst, redis_client: redis.Redis
) -> None:
    post = partial(_status, ingress)
    post(event(1))
    burst()
    started = time.monotonic()
    assert post(event(5)) == {"status": "queued"}  # gap 2..4, first seen now
    burst()
    _sleep_until(started + 2.0)
    assert post(event(2), event(3)) == {"status": "queued"}  # the gap partly fills: a new gap at 4
    burst()
    assert _indexes(redis_client) == [1, 2, 3]
    # The first gap's wait is over, the new gap's is not: another push makes the chat due, and 4 is
    # still waited for (the old gap_since skipped it here, 2 s after it was first seen).
    _sleep_until(started + 4.3)
    assert post(event(7)) == {"status": "queued"}  # and a gap at 6, first seen now
    burst()
    assert _indexes(redis_client) == [1, 2, 3]
    assert post(event(4)) == {"status": "queued"}
    burst()
    assert _indexes(redis_client) == [1, 2, 3, 4, 5]  # 6 has its own wait, from when it was seen
    assert post(event(6)) == {"status": "queued"}
    burst()
    assert _indexes(redis_client) == [1, 2, 3, 4, 5, 6, 7]
    assert redis_client.hget(keys.COUNTERS, "payload_gaps_skipped") is None


@pytest.mark.parametrize("relay_env", [{"GMS_URL": "http://127.0.0.1:9", "PAYLOAD_GAP_WAIT_MS": "60000"}])
def test_a_push_that_fills_a_gap_is_delivered_at_once(
    ingress: TestClient, burst: Burst, redis_client: redis.Redis
) -> None:
    """Not when the gap's wait ends: the chat waiting for its gap is due again with the next push."""
    ingress.post("/push", content=body(payload_message([event(1), event(3)])))
    burst()
    assert _indexes(redis_client) == [1]
    ingress.post("/push", content=body(payload_message([event(2)])))
    burst()
    assert _indexes(redis_client) == [1, 2, 3]


@pytest.mark.parametrize("relay_env", [{"GMS_URL": "http://127.0.0.1:9", "PAYLOAD_GAP_WAIT_MS": "3000"}])
def test_disjoint_gaps_each_wait_from_when_they_were_seen(
    ingress: TestClient, burst: Burst, burst_until: BurstUntil, redis_client: redis.Redis
) -> None:
    post = partial(_status, ingress)
    post(event(1))
    burst()
    started = time.monotonic()
    post(event(3))  # a gap at 2
    burst()
    _sleep_until(started + 1.5)
    seen_ms = time.time_ns() // 1_000_000
    post(event(5))  # a gap at 4, seen 1.5 s later
    burst()
    burst_until(lambda: len(_indexes(redis_client)) >= 2)
    assert _indexes(redis_client) == [1, 3]  # 2 is given up on, 4 is still waited for
    assert time.monotonic() - started >= 3.0
    # 4 waits from when it was seen, not from when it became the first gap (1.5 s later).
    assert 0 <= int(redis_client.hget(keys.session("s1"), "gap_since") or 0) - seen_ms < 1000
    burst_until(lambda: len(_indexes(redis_client)) >= 3)
    assert _indexes(redis_client) == [1, 3, 5]
    assert time.monotonic() - started >= 4.5
    assert redis_client.hget(keys.COUNTERS, "payload_gaps_skipped") == b"2"
    assert post(event(4)) == {"status": "late"}


def test_no_cursor_yet_an_earlier_push_that_arrives_second_is_delivered_first(
    ingress: TestClient, burst: Burst, redis_client: redis.Redis
) -> None:
    """Pushes of one session can arrive out of order (gms-protocol.md section 3): with no cursor yet,
    a first staged index above 1 waits for the lower ones."""
    assert ingress.post("/push", content=body(payload_message([event(2), event(3)]))).json() == {
        "status": "queued"
    }
    burst()
    assert stream_entries(redis_client, "d1") == []
    assert ingress.post("/push", content=body(payload_message([event(1, "ParticipantJoined")]))).json() == {
        "status": "queued"
    }
    burst()
    assert _indexes(redis_client) == [1, 2, 3]


@pytest.mark.parametrize("relay_env", [{"GMS_URL": "http://127.0.0.1:9", "PAYLOAD_GAP_WAIT_MS": "1000"}])
def test_no_cursor_yet_delivery_starts_above_1_after_the_gap_wait(
    ingress: TestClient, burst: Burst, burst_until: BurstUntil, redis_client: redis.Redis
) -> None:
    started = time.monotonic()
    ingress.post("/push", content=body(payload_message([event(3), event(4)])))
    burst()
    assert stream_entries(redis_client, "d1") == []
    burst_until(lambda: _indexes(redis_client) == [3, 4])
    assert time.monotonic() - started >= 1.0
    late = ingress.post("/push", content=body(payload_message([event(1), event(2)])))
    assert (late.status_code, late.json()) == (200, {"status": "late"})
    assert redis_client.hget(keys.COUNTERS, "payload_late") == b"2"


@pytest.mark.parametrize("relay_env", [{"GMS_URL": "http://127.0.0.1:9", "PAYLOAD_GAP_WAIT_MS": "300"}])
def test_an_event_that_arrives_after_its_gap_was_skipped_is_answered_late_and_counted(
    ingress: TestClient, burst: Burst, burst_until: BurstUntil, redis_client: redis.Redis
) -> None:
    post = partial(_push, ingress)
    post(event(1))
    post(event(3))
    burst_until(lambda: _indexes(redis_client) == [1, 3])  # 2 is given up on
    late = post(event(2))
    assert (late.status_code, late.json()) == (200, {"status": "late"})
    assert post(event(3)).json() == {"status": "duplicate"}  # delivered: a duplicate, not late
    assert post(event(1)).json() == {"status": "duplicate"}
    mixed = post(event(2), event(4))  # one late event, one new one: the new one is delivered
    assert mixed.json() == {"status": "late"}
    burst()
    assert _indexes(redis_client) == [1, 3, 4]
    assert redis_client.hget(keys.COUNTERS, "payload_late") == b"2"
    text = ingress.get("/metrics").text
    assert "gms_relay_payload_late_total 2" in text
    assert 'gms_relay_pushes_total{kind="payload",outcome="late"} 2.0' in text


@pytest.mark.parametrize("relay_env", [{"GMS_URL": "http://127.0.0.1:9", "PAYLOAD_GAP_WAIT_MS": "300"}])
def test_an_event_staged_while_its_gap_was_being_skipped_is_counted_and_logged(
    ingress: TestClient,
    burst: Burst,
    burst_until: BurstUntil,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The push of index 2 reached the ingress after a worker had claimed the chat (cursor 2) and before
    it committed skipping 2: the ingress staged it; the next claim finds it below the cursor."""
    ingress.post("/push", content=body(payload_message([event(1)])))
    ingress.post("/push", content=body(payload_message([event(3)])))
    burst_until(lambda: _indexes(redis_client) == [1, 3])
    redis_client.hset(keys.staged("s1"), "2", json.dumps(event(2)))  # what that ingest call left
    ingress.post("/push", content=body(payload_message([event(4)])))
    with caplog.at_level(logging.WARNING, logger="gms_relay.worker"):
        burst()
    assert _indexes(redis_client) == [1, 3, 4]
    assert not redis_client.hexists(keys.staged("s1"), "2")
    assert redis_client.hget(keys.COUNTERS, "payload_late") == b"1"
    assert any("late" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def _device_push(*events: dict[str, Any], ended: bool = False) -> bytes:
    return body(payload_message(list(events), chat_id=None, ended=ended))


def _sessions(client: redis.Redis, device_id: str = "d1") -> list[str]:
    seen: list[str] = []
    for entry in stream_entries(client, device_id):
        if entry["sessionId"] not in seen:
            seen.append(entry["sessionId"])
    return seen


def test_a_new_transcript_on_a_device_keyed_chat_starts_a_new_chat(
    ingress: TestClient, burst: Burst, redis_client: redis.Redis
) -> None:
    """Payload pushes without chatId are keyed by the device: index 1 after the chat ended starts the
    device's next chat (it used to answer `ended`), under a new session id."""
    ingress.post("/push", content=_device_push(event(1, "ParticipantJoined"), event(2)))
    ingress.post("/push", content=_device_push(event(3), ended=True))
    burst()
    assert _sessions(redis_client) == ["d1"]
    assert ingress.post("/push", content=_device_push(event(4))).json() == {"status": "ended"}  # the old chat
    second = ingress.post("/push", content=_device_push(event(1, "ParticipantJoined")))
    assert second.json() == {"status": "queued"}
    ingress.post("/push", content=_device_push(event(2), ended=True))
    burst()
    first, new = _sessions(redis_client)
    assert first == "d1" and new.startswith("d1~")
    mine = [e for e in stream_entries(redis_client, "d1") if e["sessionId"] == new]
    assert [(e["type"], e.get("index")) for e in mine] == [
        ("ParticipantJoined", "1"),
        ("Message", "2"),
        ("chat.ended", None),
    ]
    assert redis_client.get(keys.ended(new)) == b"chatEnded"
    assert 0 < redis_client.pttl(keys.ended(new))


def test_index_1_again_starts_a_new_chat_even_without_an_end(
    ingress: TestClient, burst: Burst, redis_client: redis.Redis
) -> None:
    """The push carrying the first chat's end was lost (GMS never resends payload pushes)."""
    ingress.post("/push", content=_device_push(event(1, "ParticipantJoined"), event(2)))
    burst()
    assert ingress.post("/push", content=_device_push(event(1, "ParticipantJoined"))).json() == {
        "status": "queued"
    }
    ingress.post("/push", content=_device_push(event(2, text="second chat")))
    burst()
    first, new = _sessions(redis_client)
    assert (first, new[:3]) == ("d1", "d1~")
    assert [(e["sessionId"], e["index"]) for e in stream_entries(redis_client, "d1")] == [
        ("d1", "1"),
        ("d1", "2"),
        (new, "1"),
        (new, "2"),
    ]
    assert json.loads(stream_entries(redis_client, "d1")[-1]["data"])["text"] == "second chat"
    assert redis_client.get(keys.device("d1")) == new.encode()
    for key in (keys.session(new), keys.device("d1"), keys.session("d1")):
        assert redis_client.pttl(key) > 0, key


@pytest.mark.parametrize("relay_env", [{"GMS_URL": "http://127.0.0.1:9", "PAYLOAD_GAP_WAIT_MS": "300"}])
def test_participant_joined_after_an_end_starts_a_new_chat(
    ingress: TestClient, burst: Burst, burst_until: BurstUntil, redis_client: redis.Redis
) -> None:
    """The next chat's index 1 push was lost: its ParticipantJoined (index 2) after the end starts it."""
    ingress.post("/push", content=_device_push(event(1, "ParticipantJoined"), event(2), ended=True))
    burst()
    assert ingress.post("/push", content=_device_push(event(3))).json() == {"status": "ended"}
    joined = ingress.post("/push", content=_device_push(event(2, "ParticipantJoined"), event(3)))
    assert joined.json() == {"status": "queued"}
    burst_until(lambda: len(_sessions(redis_client)) == 2 and len(stream_entries(redis_client, "d1")) == 5)
    first, new = _sessions(redis_client)
    assert [(e["sessionId"], e["type"]) for e in stream_entries(redis_client, "d1")][3:] == [
        (new, "ParticipantJoined"),
        (new, "Message"),
    ]
    assert ingress.post("/push", content=_device_push(event(4))).json() == {"status": "queued"}  # same chat
    burst()
    assert _sessions(redis_client) == [first, new]
