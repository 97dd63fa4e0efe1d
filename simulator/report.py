"""What a simulator run did, per chat and in total: a JSON-serialisable msgspec Struct."""

from __future__ import annotations

from typing import Any

import msgspec

from simulator.chat_api import RefreshLog, RefreshRecord
from simulator.sender import PushRecord, PushSender, PushStats
from simulator.transcript import ChatStore


class ChatReport(msgspec.Struct, kw_only=True):
    session_id: str
    user_id: str
    device_id: str
    mode: str
    service: str
    alias: str  # the current alias
    aliases: list[str]  # every alias handed out, oldest first
    ended: bool
    flex_secure_key: bool
    flex_app_dbid: bool
    alias_switches: int  # alias changes outside any Refresh
    other_client_refreshes: int  # Refreshes by another client of the customer (ahead notifications)
    registration_status: int | None  # HTTP status of PUT /sessions/{id}; 0 transport error; None: not sent
    transcript: list[dict[str, Any]]
    pushes: PushStats
    push_log: list[PushRecord]
    refreshes: list[RefreshRecord]


class Totals(msgspec.Struct, kw_only=True):
    chats: int = 0
    events: int = 0
    pushes_sent: int = 0
    pushes_acked: int = 0
    pushes_rejected: int = 0
    triggers: int = 0  # fresh triggers (attempt 0), exact duplicates not counted
    resends: int = 0
    resends_per_1000_triggers: float = 0.0
    duplicates: int = 0
    late: int = 0  # pushes held back on the way
    exhausted: int = 0
    alias_switches: int = 0
    other_client_refreshes: int = 0
    refreshes: int = 0
    refreshes_ok: int = 0
    refreshes_cometd_key: int = 0  # must stay 0: the message-level key is CometD-only
    refreshes_stale_alias: int = 0  # sent an alias the chat had before (rejected if require_alias)
    refreshes_missing_alias: int = 0  # sent no alias at all
    refreshes_alias_error: int = 0  # answered HTTP 400 because the alias was missing, unknown or stale
    registrations_failed: int = 0


class Report(msgspec.Struct, kw_only=True):
    push_url: str
    chat_api_url: str
    duration_s: float
    settled: bool  # every push answered and every trigger acknowledged (or exhausted) before the end
    totals: Totals
    chats: list[ChatReport]

    def chat(self, session_id: str) -> ChatReport:
        return next(c for c in self.chats if c.session_id == session_id)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result


def build_report(
    store: ChatStore,
    sender: PushSender,
    log: RefreshLog,
    *,
    registrations: dict[str, int],
    push_url: str,
    chat_api_url: str,
    duration_s: float,
    settled: bool,
) -> Report:
    """Assemble the report from the store, the sender's push log and the refresh log."""
    chats: list[ChatReport] = []
    totals = Totals()
    for chat_id in store.chat_ids():
        chat = store.get(chat_id)
        if chat is None:
            continue
        stats = sender.stats(chat_id)
        refreshes = log.records(chat_id)
        chats.append(
            ChatReport(
                session_id=chat.chat_id,
                user_id=chat.user_id,
                device_id=chat.device_id,
                mode=chat.mode,
                service=chat.service,
                alias=chat.alias,
                aliases=chat.aliases,
                ended=chat.ended,
                flex_secure_key=chat.flex_secure_key,
                flex_app_dbid=chat.flex_app_dbid,
                alias_switches=chat.alias_switches,
                other_client_refreshes=chat.other_client_refreshes,
                registration_status=registrations.get(chat_id),
                transcript=chat.events,
                pushes=stats,
                push_log=sender.records(chat_id),
                refreshes=refreshes,
            )
        )
        totals.chats += 1
        totals.events += len(chat.events)
        totals.pushes_sent += stats.sent
        totals.pushes_acked += stats.acked
        totals.pushes_rejected += stats.rejected
        totals.triggers += stats.triggers
        totals.resends += stats.resends
        totals.duplicates += stats.duplicates
        totals.late += stats.late
        totals.exhausted += stats.exhausted
        totals.alias_switches += chat.alias_switches
        totals.other_client_refreshes += chat.other_client_refreshes
        totals.refreshes += len(refreshes)
        totals.refreshes_ok += sum(1 for r in refreshes if r.outcome == "ok")
        totals.refreshes_cometd_key += sum(1 for r in refreshes if r.key_kind == "cometd")
        totals.refreshes_stale_alias += sum(1 for r in refreshes if r.alias_kind == "stale")
        totals.refreshes_missing_alias += sum(1 for r in refreshes if r.alias_kind == "missing")
        totals.refreshes_alias_error += sum(1 for r in refreshes if r.outcome == "alias_error")
        totals.registrations_failed += not 200 <= registrations.get(chat_id, 200) < 300
    if totals.triggers:
        totals.resends_per_1000_triggers = round(1000 * totals.resends / totals.triggers, 2)
    return Report(
        push_url=push_url,
        chat_api_url=chat_api_url,
        duration_s=round(duration_s, 3),
        settled=settled,
        totals=totals,
        chats=chats,
    )
