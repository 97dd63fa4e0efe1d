"""What the end-to-end tests hold the pipeline to, checked against a simulator report."""

from __future__ import annotations

import json

import redis

from shared import keys
from simulator.report import ChatReport, Report


def stream(client: redis.Redis, device_id: str) -> list[dict[str, str]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(keys.stream(device_id))  # type: ignore[assignment]
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


def expected_indexes(chat: ChatReport) -> list[int]:
    """Reliable chats: the whole transcript. Payload chats: from the first event pushed."""
    indexes = [int(e["index"]) for e in chat.transcript if e.get("type") != "PushUrl"]
    if chat.mode == "payload":
        pushed = [i for record in chat.push_log for i in record.indexes]
        indexes = [i for i in indexes if pushed and i >= min(pushed)]
    return indexes


def chat_done(client: redis.Redis, chat: ChatReport) -> bool:
    if chat.mode == "wakeup":
        acked = sum(1 for r in chat.push_log if r.acked)
        return sum(e["type"] == "device.wakeup" for e in stream(client, chat.device_id)) >= acked
    entries = [e for e in stream(client, chat.device_id) if e.get("sessionId") == chat.session_id]
    delivered = [int(e["index"]) for e in entries if e["type"] != "chat.ended"]
    ended = any(e["type"] == "chat.ended" for e in entries)
    return delivered == expected_indexes(chat) and ended == chat.ended


def assert_exactly_once_in_order(client: redis.Redis, report: Report) -> None:
    for chat in report.chats:
        entries = stream(client, chat.device_id)
        if chat.mode == "wakeup":
            acked = sum(1 for r in chat.push_log if r.acked)
            assert sum(e["type"] == "device.wakeup" for e in entries) == acked, chat.session_id
            continue
        mine = [e for e in entries if e.get("sessionId") == chat.session_id]
        delivered = [int(e["index"]) for e in mine if e["type"] != "chat.ended"]
        assert delivered == expected_indexes(chat), (
            chat.session_id,
            chat.mode,
            delivered,
            expected_indexes(chat),
        )
        by_index = {int(e["index"]): e for e in chat.transcript}
        for entry in mine:
            if entry["type"] != "chat.ended":
                assert json.loads(entry["data"]) == by_index[int(entry["index"])]  # every member kept
        ended = [e for e in mine if e["type"] == "chat.ended"]
        if chat.ended:
            assert len(ended) == 1, chat.session_id
            assert mine[-1]["type"] == "chat.ended"


def assert_resends_only_after_failures(report: Report) -> None:
    for chat in report.chats:
        if chat.pushes.resends:
            failed = [r for r in chat.refreshes if r.outcome != "ok"]
            assert failed, (
                f"{chat.session_id} needed {chat.pushes.resends} resends without an injected failure"
            )
