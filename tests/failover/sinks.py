"""What a failover did to the sinks, chat by chat: acknowledged pushes lost, events missing, repeated
or out of order in the stream and at the webhook receiver. Counted, so a test can assert the promise
of its acknowledgement level and print the rest."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, fields
from itertools import pairwise

import redis

from shared import keys
from simulator.receiver import WebhookReceiver
from simulator.report import ChatReport, Report
from tests.e2e.checks import chat_done, expected_end, expected_indexes, stream
from tests.processes import wait_for


@dataclass
class Tally:
    """Totals over every chat of a run (each "lost" is acknowledged with 200 and never delivered)."""

    pushes_acked: int = 0
    reliable_chats: int = 0
    reliable_incomplete: int = 0  # some transcript event never reached the stream
    payload_events_acked: int = 0
    payload_events_lost: int = 0
    payload_events_unacked: int = 0  # delivered though their push was not answered 200 (see below)
    wakeups_acked: int = 0
    wakeups_lost: int = 0
    ends_wrong: int = 0  # a chat whose stream has no chat.ended though its end was acknowledged, or two
    stream_repeats: int = 0  # an index a second time in a chat's stream
    stream_out_of_order: int = 0  # an index at or below the one before it
    webhook_repeats: int = 0  # one (session, index) in two deliveries with different webhook-ids
    webhook_out_of_order: int = 0
    webhook_missing: int = 0  # in the stream, never delivered to the webhook sink

    def line(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


def _disorder(indexes: list[int]) -> tuple[int, int]:
    """(repeats, steps that go backwards) in one chat's sequence of indexes."""
    repeats = len(indexes) - len(set(indexes))
    backwards = sum(1 for a, b in pairwise(indexes) if b <= a)
    return repeats, backwards


def _webhook_indexes(receiver: WebhookReceiver, sessions: set[str]) -> tuple[dict[str, list[int]], int]:
    """Per session of `sessions`, the indexes of its deliveries in arrival order (a retried delivery,
    same webhook-id, counted once); and how many (session, index) came under two webhook-ids."""
    seen: set[str] = set()
    ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    order: dict[str, list[int]] = defaultdict(list)
    for delivery in receiver.accepted():
        data = delivery.json["data"]
        if data.get("sessionId") not in sessions:
            continue
        for event in data.get("events", []):
            ids[(data["sessionId"], event["index"])].add(delivery.webhook_id)
        if delivery.webhook_id in seen:
            continue
        seen.add(delivery.webhook_id)
        order[data.get("sessionId", "")] += [e["index"] for e in data.get("events", [])]
    return order, sum(1 for found in ids.values() if len(found) > 1)


def tally(client: redis.Redis, report: Report, receiver: WebhookReceiver) -> Tally:
    """Count, for every chat of `report`, what its sinks hold against what was acknowledged.

    A push the ingress did not answer 200 may still be stored: the primary ran its script and died
    before the reply, or (replicated) the replica confirmed too late. Such payload events are
    delivered, in order, and counted in `payload_events_unacked`: GMS saw a failure, the customer's
    app sees the event; no acknowledged event is affected."""
    total = Tally()
    hooked, total.webhook_repeats = _webhook_indexes(receiver, {c.session_id for c in report.chats})
    for chat in report.chats:
        total.pushes_acked += sum(1 for r in chat.push_log if r.acked)
        entries = stream(client, chat.device_id)
        if chat.mode == "wakeup":
            acked = sum(1 for r in chat.push_log if r.acked)
            got = sum(1 for e in entries if e["type"] == "device.wakeup")
            total.wakeups_acked += acked
            total.wakeups_lost += max(0, acked - got)
            continue
        delivered = [
            int(e["index"]) for e in entries if e.get("sessionId") == chat.session_id and "index" in e
        ]
        ends = sum(1 for e in entries if e.get("sessionId") == chat.session_id and e["type"] == "chat.ended")
        total.ends_wrong += ends > 1 or (expected_end(chat) and ends == 0)
        repeats, backwards = _disorder(delivered)
        total.stream_repeats += repeats
        total.stream_out_of_order += backwards
        want = set(expected_indexes(chat))
        if chat.mode == "reliable":
            total.reliable_chats += 1
            total.reliable_incomplete += bool(want - set(delivered))
        else:
            total.payload_events_acked += len(want)
            total.payload_events_lost += len(want - set(delivered))
            total.payload_events_unacked += len(set(delivered) - want)
        repeats, backwards = _disorder(hooked.get(chat.session_id, []))
        total.webhook_out_of_order += backwards
        total.webhook_missing += len(set(delivered) - set(hooked.get(chat.session_id, [])))
    return total


def wait_settled(client: redis.Redis, report: Report, timeout_s: float = 90.0) -> None:
    """Until the relay has nothing left to do: every reliable chat whole in the stream (Chat Server's
    resends recover what a failover lost), no chat due (a payload gap is skipped after
    PAYLOAD_GAP_WAIT_MS) and no webhook delivery outstanding."""

    def reliable_done(chat: ChatReport) -> bool:
        return chat.mode != "reliable" or chat_done(client, chat)

    def settled() -> bool:
        idle = client.zcard(keys.DIRTY) == 0 and client.zcard(keys.DELIVERIES) == 0
        return idle and all(reliable_done(c) for c in report.chats)

    wait_for(settled, timeout_s=timeout_s, step_s=0.1)
