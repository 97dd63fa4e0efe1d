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
    """Reliable chats: the whole transcript (resends recover what was not accepted). Payload chats:
    the events of the pushes the relay accepted (GMS never sends a payload push twice)."""
    if chat.mode == "payload":
        return sorted({i for record in chat.push_log if record.acked for i in record.indexes})
    return [int(e["index"]) for e in chat.transcript if e.get("type") != "PushUrl"]


def expected_end(chat: ChatReport) -> bool:
    """Payload chats end only if the push carrying the last event (and chatEnded) was accepted."""
    if chat.mode == "payload":
        return chat.ended and int(chat.transcript[-1]["index"]) in expected_indexes(chat)
    return chat.ended


def chat_done(client: redis.Redis, chat: ChatReport) -> bool:
    if chat.mode == "wakeup":
        acked = sum(1 for r in chat.push_log if r.acked)
        return sum(e["type"] == "device.wakeup" for e in stream(client, chat.device_id)) >= acked
    entries = [e for e in stream(client, chat.device_id) if e.get("sessionId") == chat.session_id]
    delivered = [int(e["index"]) for e in entries if e["type"] != "chat.ended"]
    ended = any(e["type"] == "chat.ended" for e in entries)
    return delivered == expected_indexes(chat) and ended == expected_end(chat)


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
        if expected_end(chat):
            assert len(ended) == 1, chat.session_id
            assert mine[-1]["type"] == "chat.ended"
        else:
            assert ended == [], chat.session_id


def assert_resends_only_after_failures(report: Report) -> None:
    for chat in report.chats:
        if chat.pushes.resends:
            failed = [r for r in chat.refreshes if r.outcome != "ok"]
            assert failed, (
                f"{chat.session_id} needed {chat.pushes.resends} resends without an injected failure"
            )


def unfinished(client: redis.Redis, report: Report) -> list[str]:
    """Why each unfinished chat is unfinished: a diagnostic for failing waits."""
    lines = []
    for chat in report.chats:
        if chat_done(client, chat):
            continue
        entries = [e for e in stream(client, chat.device_id) if e.get("sessionId") == chat.session_id]
        got = [e.get("index") or e["type"] for e in entries]
        session = client.hgetall(keys.session(chat.session_id))
        lines.append(
            f"{chat.session_id} {chat.mode} ended={chat.ended} got={got} want={expected_indexes(chat)} "
            f"session={session} dirty_in_ms={_due_in_ms(client, chat.session_id)} "
            f"staged={sorted(int(i) for i in client.hkeys(keys.staged(chat.session_id)))} "
            f"acked={len([r for r in chat.push_log if r.acked])} "
            f"pushes={[(p.kind, p.position, p.attempt, p.status) for p in chat.push_log][-4:]} "
            f"refreshes={[(r.transcript_position, r.outcome, r.returned) for r in chat.refreshes][-8:]} "
            f"nrefreshes={len(chat.refreshes)}"
        )
    return lines


def _due_in_ms(client: redis.Redis, session_id: str) -> float | None:
    import time

    score = client.zscore(keys.DIRTY, session_id)
    return None if score is None else round(score - time.time() * 1000)


def wait_all_done(client: redis.Redis, report: Report, timeout_s: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not all(chat_done(client, c) for c in report.chats):
        if time.monotonic() > deadline:
            raise AssertionError("unfinished chats:\n" + "\n".join(unfinished(client, report)))
        time.sleep(0.05)
