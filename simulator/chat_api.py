"""Chat API v2 of the simulated GMS: Request Chat, Send, typing, Refresh, Disconnect, with switchable faults.

Every Refresh is recorded (key and alias used, outcome) so tests can prove the relay never used the
CometD key, kept the latest alias, and how often it called. Like a GMS in front of several Chat Servers,
which routes a session's calls by alias, it rejects calls whose alias is missing, unknown or stale.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from simulator.agent import SCRIPTED_KEY, Agent
from simulator.transcript import Chat, ChatStore, EventSpec, Mode

KeyKind = Literal["rest", "cometd", "missing", "other"]
AliasKind = Literal["current", "stale", "missing", "unknown"]
Outcome = Literal[
    "ok", "http503", "status1", "http400_end", "auth_error", "alias_error", "unknown_chat", "bad_request"
]
_BASE = "/genesys/2/chat/{service}"
# The `errors[].code` of an alias rejection. Genesys documents no code for it; the simulator's own
# codes are 100 (retry), 101 (bad request), 102 (session or credentials), 103 (agent disconnected).
ALIAS_ERROR_CODE = 104
# Chat API v2 typing actions and the events they add.
_TYPING = {"startTyping": "TypingStarted", "stopTyping": "TypingStopped"}


@dataclass
class Faults:
    """Fault switches, read on every Refresh; change them at any time from any thread. `alias_switch`
    and `ahead_rate` are read by the ChatStore once per pushed event batch of a reliable chat (the
    ChatServer hands its Faults to its store): they are Chat Server behaviour, not Chat API replies."""

    fail_refresh_http503: float = 0.0  # probability of HTTP 503
    fail_refresh_status1: float = 0.0  # probability of statusCode 1 (worth retrying)
    # Agent disconnected: HTTP 400 from now on for that chat. A probability per refresh, or chat ids.
    fail_refresh_http400_end: float | set[str] = 0.0
    refresh_delay_ms: int = 0
    fail_until: float = 0.0  # time.monotonic() deadline: every refresh answers 503 until it passes
    alias_change: float = 0.0  # probability a successful refresh hands out a new alias
    # Probability per pushed batch that the alias changes outside any Refresh (the session moved to
    # another Chat Server); only chats whose triggers carry `app-dbid` (flex_app_dbid) switch.
    alias_switch: float = 0.0
    # Probability per pushed batch that another client of the customer fetches it at once (not through
    # the relay): the batch's triggers then carry a notify-position beyond what the relay has fetched.
    ahead_rate: float = 0.0
    # Refresh, Send and Disconnect answer HTTP 400 / statusCode 2 unless `alias` is the chat's current one.
    require_alias: bool = True
    rng: random.Random = field(default_factory=random.Random)

    def fail_for(self, seconds: float) -> None:
        self.fail_until = time.monotonic() + seconds

    def roll(self, probability: float) -> bool:
        return probability > 0 and self.rng.random() < probability


class RefreshRecord(msgspec.Struct, kw_only=True):
    chat_id: str
    service: str
    transcript_position: int | None
    secure_key: str | None  # the key the caller sent
    key_kind: KeyKind
    alias: str | None
    alias_kind: AliasKind
    user_id_ok: bool
    at: float  # time.monotonic() on arrival
    outcome: Outcome
    http_status: int
    status_code: int | None
    returned: int = 0  # events returned
    next_position: int | None = None


class RefreshLog:
    """Thread-safe list of every Refresh call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RefreshRecord] = []

    def add(self, record: RefreshRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(self, chat_id: str | None = None) -> list[RefreshRecord]:
        with self._lock:
            return [r for r in self._records if chat_id is None or r.chat_id == chat_id]

    def count(self, chat_id: str | None = None, outcome: Outcome | None = None) -> int:
        return sum(1 for r in self.records(chat_id) if outcome is None or r.outcome == outcome)


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


def _error(code: int, advice: str, status: int = 200, status_code: int = 2) -> Response:
    return _json({"statusCode": status_code, "errors": [{"code": code, "advice": advice}]}, status)


async def _params(request: Request) -> dict[str, str]:
    """Query and form parameters merged (form wins), like a servlet's getParameter."""
    params = dict(request.query_params)
    params.update(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
    return params


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _mode(user_data: dict[str, str]) -> Mode:
    if _truthy(user_data.get("GCTI_GMS_PushResend")):
        return "reliable"
    if _truthy(user_data.get("GCTI_GMS_PushIncludePayload")):
        return "payload"
    return "wakeup"


def _credentials_ok(chat: Chat, params: dict[str, str]) -> bool:
    return params.get("userId") == chat.user_id and params.get("secureKey") == chat.secure_key


def _session(chat: Chat) -> dict[str, Any]:
    return {"chatId": chat.chat_id, "userId": chat.user_id, "secureKey": chat.secure_key, "alias": chat.alias}


class ChatApi:
    """The Starlette app and the state it serves: `ChatApi(store, faults).app`."""

    def __init__(
        self,
        store: ChatStore,
        faults: Faults | None = None,
        log: RefreshLog | None = None,
        agent: Agent | None = None,
    ) -> None:
        self.store = store
        self.faults = faults or Faults()
        self.log = log or RefreshLog()
        self.agent = agent
        self.app = Starlette(
            routes=[
                Route(_BASE, self.request_chat, methods=["POST"]),
                Route(_BASE + "/{chat_id}/{action}", self.chat_action, methods=["POST"]),
            ]
        )

    async def request_chat(self, request: Request) -> Response:
        """Request Chat. Pushes go to the device only when the chat app subscribed to customhttp push
        (GCTI_Chat_PushSubscribe=true, GCTI_GMS_PushDeviceType=customhttp, a device id); unless the app
        scripts its own agent (SCRIPTED_KEY), the simulated agent (if any) joins and answers."""
        params = await _params(request)
        user_data = {k[9:-1]: v for k, v in params.items() if k.startswith("userData[") and k.endswith("]")}
        subscribed = _truthy(user_data.get("GCTI_Chat_PushSubscribe")) and (
            user_data.get("GCTI_GMS_PushDeviceType", "").strip().lower() == "customhttp"
        )
        chat = self.store.create_chat(
            service=request.path_params["service"],
            nickname=params.get("nickname") or "Customer",
            device_id=user_data.get("GCTI_GMS_PushDeviceId", "") if subscribed else "",
            mode=_mode(user_data),
            user_data=user_data,
            # Absent: the requestor is notified too (what the simulator always did).
            notify_requestor=user_data.get("GCTI_GMS_NotifyRequestor", "true").strip().lower() != "false",
        )
        if self.agent is not None and not _truthy(user_data.get(SCRIPTED_KEY)):
            self.agent.join(chat)
        return _json({"statusCode": 0, **_session(chat), "chatEnded": False})

    async def chat_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action == "refresh":
            return await self.refresh(request)
        params = await _params(request)
        chat = self.store.get(request.path_params["chat_id"], with_events=False)
        if chat is None or not _credentials_ok(chat, params):
            return _error(102, "Chat session not found or credentials invalid")
        kind = _alias_kind(chat, params.get("alias"))
        if self.faults.require_alias and kind != "current":
            return _alias_error(kind)
        if action == "send":
            self.store.append(chat.chat_id, [_customer_message(params.get("message", ""))])
        elif action in _TYPING:
            self.store.append(chat.chat_id, [EventSpec(_TYPING[action], "customer")])
        elif action == "disconnect":
            self.store.end(chat.chat_id, who="customer")
        else:
            return _error(101, f"Unknown operation {action!r}", status=404)
        chat = self.store.get(chat.chat_id, with_events=False) or chat
        return _json({"statusCode": 0, **_session(chat), "chatEnded": chat.ended})

    async def refresh(self, request: Request) -> Response:
        arrived_at = time.monotonic()
        params = await _params(request)
        chat_id = request.path_params["chat_id"]
        chat = self.store.get(chat_id, with_events=False)
        faults = self.faults
        if faults.refresh_delay_ms > 0:
            await asyncio.sleep(faults.refresh_delay_ms / 1000)
        position = _position(params.get("transcriptPosition"))
        record = RefreshRecord(
            chat_id=chat_id,
            service=request.path_params["service"],
            transcript_position=position,
            secure_key=params.get("secureKey"),
            key_kind=_key_kind(chat, params.get("secureKey")),
            alias=params.get("alias"),
            alias_kind=_alias_kind(chat, params.get("alias")),
            user_id_ok=chat is not None and params.get("userId") == chat.user_id,
            at=arrived_at,
            outcome="ok",
            http_status=200,
            status_code=0,
        )
        response = self._refresh_outcome(chat, record, arrived_at)
        self.log.add(record)
        return response

    def _refresh_outcome(self, chat: Chat | None, record: RefreshRecord, arrived_at: float) -> Response:
        faults = self.faults
        if chat is None:
            record.outcome, record.status_code = "unknown_chat", 2
            return _error(102, "Chat session not found")
        if time.monotonic() < faults.fail_until or faults.roll(faults.fail_refresh_http503):
            record.outcome, record.http_status, record.status_code = "http503", 503, None
            return Response("Service Unavailable", status_code=503, media_type="text/plain")
        if not record.user_id_ok or record.key_kind != "rest":
            record.outcome, record.status_code = "auth_error", 2
            return _error(102, "Invalid userId or secureKey")
        if faults.require_alias and record.alias_kind != "current":
            record.outcome, record.http_status, record.status_code = "alias_error", 400, 2
            return _alias_error(record.alias_kind)
        end400 = faults.fail_refresh_http400_end
        if chat.agent_disconnected or (
            chat.chat_id in end400 if isinstance(end400, set) else faults.roll(end400)
        ):
            self.store.disconnect_agent(chat.chat_id)
            record.outcome, record.http_status, record.status_code = "http400_end", 400, 2
            return _error(103, "Chat session is disconnected", status=400)
        if faults.roll(faults.fail_refresh_status1):
            record.outcome, record.status_code = "status1", 1
            return _error(100, "Internal error, retry later", status_code=1)
        if record.transcript_position is None:
            record.outcome, record.status_code = "bad_request", 2
            return _error(101, "transcriptPosition must be an integer >= 1")
        result = self.store.refresh(
            chat.chat_id,
            record.transcript_position,
            arrived_at,
            change_alias=faults.roll(faults.alias_change),
        )
        record.returned, record.next_position = len(result.events), result.next_position
        return _json(
            {
                "statusCode": 0,
                "chatEnded": result.chat_ended,
                "chatId": chat.chat_id,
                "userId": chat.user_id,
                "secureKey": chat.secure_key,
                "alias": result.alias,
                "nextPosition": result.next_position,
                "messages": result.events,
            }
        )


def _alias_error(kind: AliasKind) -> Response:
    """What a multi-Chat-Server GMS answers when it cannot route by the alias given."""
    advice = {
        "missing": "alias is required",
        "stale": "alias is no longer valid for this session: use the latest alias",
        "unknown": "unknown alias",
    }.get(kind, "invalid alias")
    return _error(ALIAS_ERROR_CODE, advice, status=400)


def _customer_message(text: str) -> EventSpec:
    return EventSpec("Message", "customer", text, {"messageType": "text"})


def _position(value: str | None) -> int | None:
    try:
        position = int(value or "1")
    except ValueError:
        return None
    return position if position >= 1 else None


def _key_kind(chat: Chat | None, key: str | None) -> KeyKind:
    if not key:
        return "missing"
    if chat is not None and key == chat.secure_key:
        return "rest"
    if chat is not None and key == chat.cometd_key:
        return "cometd"
    return "other"


def _alias_kind(chat: Chat | None, alias: str | None) -> AliasKind:
    if not alias:
        return "missing"
    if chat is not None and alias == chat.alias:
        return "current"
    if chat is not None and alias in chat.aliases:
        return "stale"
    return "unknown"
