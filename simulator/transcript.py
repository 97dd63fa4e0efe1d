"""In-memory chats of the simulated Chat Server: transcripts, credentials, aliases and trigger bookkeeping.

One lock guards everything: the Chat API (uvicorn thread), the push sender (its own thread) and the
scenario driver all touch the same chats. Listeners run under the lock so that what the sender queues
is in transcript order; they must only enqueue, never block.
"""

from __future__ import annotations

import copy
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple, Protocol

import msgspec

from shared.clock import now_ms

Mode = Literal["reliable", "payload", "wakeup"]
Who = Literal["customer", "agent", "system"]
MODES: tuple[Mode, ...] = ("reliable", "payload", "wakeup")

# Participant ids and GMS participant types of the three parties of every simulated chat.
_PARTIES: dict[Who, tuple[int, str]] = {
    "customer": (1, "Client"),
    "agent": (2, "Agent"),
    "system": (3, "External"),
}


class EventSpec(NamedTuple):
    """An event to append: its type, who it comes from, its text and any extra members."""

    type: str
    who: Who = "agent"
    text: str | None = None
    extra: dict[str, Any] | None = None


@dataclass
class PendingTrigger:
    """A reliable trigger that was sent and not yet acknowledged by a Refresh."""

    chat_id: str
    position: int
    index: int
    attempt: int
    sent_at: float  # time.monotonic() just before the POST left


@dataclass
class Chat:
    chat_id: str
    user_id: str
    secure_key: str  # the REST key: the only one Refresh accepts
    cometd_key: str  # the obfuscated key the push message's `secureKey` member carries
    alias: str
    device_id: str
    mode: Mode
    service: str
    flex_secure_key: bool = False  # Chat Server `flex-push-content` includes `secure-key`
    flex_app_dbid: bool = False  # ... includes `app-dbid`: the alias current when each trigger is sent
    payload_as_string: bool | None = None  # None: the sender picks at random per push
    events: list[dict[str, Any]] = field(default_factory=list)
    nicknames: dict[Who, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)  # every alias the chat has had, oldest first
    ended: bool = False
    agent_disconnected: bool = False  # refreshes answer HTTP 400 from now on
    acked_position: int = 1  # first transcript index not yet acknowledged by a successful Refresh
    pending: list[PendingTrigger] = field(default_factory=list)
    refresh_count: int = 0  # successful Refreshes through the Chat API
    last_refresh_at: float | None = None  # time.monotonic() of the last Refresh, another client's too
    alias_switches: int = 0  # alias changes outside any Refresh (switch_alias)
    other_client_refreshes: int = 0  # Refreshes by another client of the customer (other_client_refresh)
    # A Refresh returned chatEnded: the client has the whole chat and Chat Server closes the session,
    # so triggers still in flight for it are never resent.
    end_seen: bool = False
    user_data: dict[str, str] = field(default_factory=dict)  # as Request Chat received it
    # userData GCTI_GMS_NotifyRequestor: whether the customer's own events are pushed to its device.
    notify_requestor: bool = True

    @property
    def next_position(self) -> int:
        return len(self.events) + 1


class RefreshResult(NamedTuple):
    events: list[dict[str, Any]]
    next_position: int
    chat_ended: bool
    alias: str


Listener = Callable[[Chat, list[dict[str, Any]]], None]
_OPTIONS = ("flex_secure_key", "flex_app_dbid", "payload_as_string")


class BatchNoise(Protocol):
    """Chat Server behaviour outside the Chat API, rolled once per pushed event batch of a reliable chat.
    The ChatServer hands its Faults to its store as this."""

    alias_switch: float  # probability of switch_alias before the batch (only chats with flex_app_dbid)
    # Probability of other_client_refresh once the batch is appended, before its triggers go out: they
    # then carry a notify-position past the batch, beyond what the relay has fetched.
    ahead_rate: float

    def roll(self, probability: float) -> bool: ...


def pushed_events(chat: Chat, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events Chat Server pushes: with GCTI_GMS_NotifyRequestor=false not the customer's own
    (its app knows what it sent), except its leaving, which ends the session."""
    if chat.notify_requestor:
        return events
    return [e for e in events if e["from"].get("type") != "Client" or e["type"] == "ParticipantLeft"]


def _copy_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A deep copy of JSON-shaped events, a few times faster than copy.deepcopy."""
    copied: list[dict[str, Any]] = msgspec.json.decode(msgspec.json.encode(events))
    return copied


class ChatStore:
    """All simulated chats, keyed by chat id (the relay's session id)."""

    def __init__(self, rng: random.Random | None = None, noise: BatchNoise | None = None) -> None:
        self._lock = threading.Lock()
        self._chats: dict[str, Chat] = {}
        self._listeners: list[Listener] = []
        self._waiting: set[str] = set()  # chats with pending triggers, so resend scans stay small
        self._rng = rng or random.Random()
        self.noise = noise  # read on every pushed batch; None: no noise

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def create_chat(
        self,
        *,
        service: str,
        nickname: str,
        device_id: str,
        mode: Mode,
        flex_secure_key: bool = False,
        flex_app_dbid: bool = False,
        user_data: dict[str, str] | None = None,
        notify_requestor: bool = True,
    ) -> Chat:
        """Open a chat with the customer already joined. The join is not pushed: the requester knows."""
        alias = str(self._rng.randint(100, 999))
        chat = Chat(
            chat_id=secrets.token_hex(8).upper(),
            user_id=secrets.token_hex(8).upper(),
            secure_key=secrets.token_hex(8),
            cometd_key=secrets.token_hex(12),
            alias=alias,
            device_id=device_id,
            mode=mode,
            service=service,
            flex_secure_key=flex_secure_key,
            flex_app_dbid=flex_app_dbid,
            nicknames={"customer": nickname, "agent": "Anna", "system": "system"},
            aliases=[alias],
            user_data=dict(user_data or {}),
            notify_requestor=notify_requestor,
        )
        with self._lock:
            self._chats[chat.chat_id] = chat
        self.append(chat.chat_id, [EventSpec("ParticipantJoined", "customer")], notify=False)
        return chat

    def configure(self, chat_id: str, **options: Any) -> None:
        """Set per-chat options: `flex_secure_key`, `flex_app_dbid` (Chat Server's flex-push-content) or
        `payload_as_string`. They are independent here; the scenario driver gives every chat with
        flex_secure_key also flex_app_dbid (the trigger is then the relay's only source of the alias)."""
        with self._lock:
            chat = self._chats[chat_id]
            for name, value in options.items():
                if name not in _OPTIONS:
                    raise ValueError(f"unknown chat option {name!r}")
                setattr(chat, name, value)

    def get(self, chat_id: str, *, with_events: bool = True) -> Chat | None:
        """A copy of the chat, safe to read without the lock; `with_events=False` leaves the transcript
        and pending triggers out (cheap: what the Chat API needs to check a call)."""
        with self._lock:
            chat = self._chats.get(chat_id)
            if chat is None:
                return None
            return replace(
                chat,
                events=_copy_events(chat.events) if with_events else [],
                pending=[copy.copy(p) for p in chat.pending] if with_events else [],
                nicknames=dict(chat.nicknames),
                aliases=list(chat.aliases),
                user_data=dict(chat.user_data),
            )

    def chat_ids(self) -> list[str]:
        with self._lock:
            return list(self._chats)

    def append(
        self, chat_id: str, specs: Iterable[EventSpec], *, notify: bool = True
    ) -> list[dict[str, Any]]:
        """Append events (indexes from 1, in order) and hand them to the listeners as one batch.

        With a pushed batch of a reliable chat the store's `noise` may switch the alias (before the
        batch) and let another client of the customer fetch it (before its triggers are sent)."""
        return _copy_events(self._append(chat_id, list(specs), notify))

    def append_many(
        self, chat_id: str, count: int, *, notify: bool = False, text: str = "line {index}"
    ) -> int:
        """Append `count` agent Messages (a large transcript) as one batch; returns the next position.
        `text` is formatted with the event's index."""
        with self._lock:
            first = self._chats[chat_id].next_position
        specs = [
            EventSpec("Message", "agent", text.format(index=first + n), {"messageType": "text"})
            for n in range(count)
        ]
        added = self._append(chat_id, specs, notify)
        return int(added[-1]["index"]) + 1 if added else first

    def _append(self, chat_id: str, specs: list[EventSpec], notify: bool) -> list[dict[str, Any]]:
        """Append under the lock; returns the stored events themselves (callers hand out copies)."""
        with self._lock:
            chat = self._chats[chat_id]
            noise = self.noise if notify and specs and chat.mode == "reliable" else None
            if noise is not None and chat.flex_app_dbid and noise.roll(noise.alias_switch):
                self._switch_alias(chat)
            added: list[dict[str, Any]] = []
            for spec in specs:
                added.append(self._event(chat, spec))
                chat.events.append(added[-1])
            if noise is not None and noise.roll(noise.ahead_rate):
                self._other_client_refresh(chat, time.monotonic())
            if notify and added:
                for listener in self._listeners:
                    listener(chat, _copy_events(added))
            return added

    def _event(self, chat: Chat, spec: EventSpec) -> dict[str, Any]:
        if spec.type == "NicknameUpdated" and spec.text:
            chat.nicknames[spec.who] = spec.text
        participant_id, kind = _PARTIES[spec.who]
        event: dict[str, Any] = {
            "index": len(chat.events) + 1,
            "type": spec.type,
            "utcTime": now_ms(),
            "from": {"nickname": chat.nicknames[spec.who], "participantId": participant_id, "type": kind},
        }
        if spec.text is not None and spec.type != "NicknameUpdated":
            event["text"] = spec.text
        event.update(spec.extra or {})
        return event

    def end(self, chat_id: str, *, who: Who = "customer", notify: bool = True) -> list[dict[str, Any]]:
        """End the chat: `who` leaves. Ending twice appends nothing."""
        with self._lock:
            if self._chats[chat_id].ended:
                return []
            self._chats[chat_id].ended = True
        return self.append(chat_id, [EventSpec("ParticipantLeft", who)], notify=notify)

    def disconnect_agent(self, chat_id: str) -> None:
        """The agent left and GMS answers HTTP 400 to refreshes (`_chat_400_response_on_disconnected`)."""
        with self._lock:
            chat = self._chats[chat_id]
            chat.agent_disconnected = True
        if not chat.ended:
            self.end(chat_id, who="agent", notify=False)

    def refresh(self, chat_id: str, position: int, arrived_at: float, *, change_alias: bool) -> RefreshResult:
        """A successful Refresh: events from `position`; acknowledges the triggers sent before it arrived."""
        with self._lock:
            chat = self._chats[chat_id]
            chat.refresh_count += 1
            self._acknowledge(chat, arrived_at)
            if chat.ended:
                chat.end_seen = True
                chat.pending = []
                self._waiting.discard(chat_id)
            if change_alias:
                self._new_alias(chat)
            # Events are never changed once appended, so the same dicts can be handed out.
            events = chat.events[position - 1 :]
            return RefreshResult(events, chat.next_position, chat.ended, chat.alias)

    def switch_alias(self, chat_id: str) -> str:
        """Change the alias outside any Refresh (the session moved to another Chat Server); returns it.
        Only later triggers' `app-dbid` and later Refresh responses reveal it, so a chat without
        flex_app_dbid has no way to learn it: the per-batch `noise` only switches chats with it."""
        with self._lock:
            return self._switch_alias(self._chats[chat_id])

    def other_client_refresh(self, chat_id: str, arrived_at: float | None = None) -> int:
        """Another client of the same customer fetches the whole transcript (a Refresh that does not go
        through the relay): it acknowledges like any Refresh, so later triggers carry a notify-position
        beyond what the relay has fetched. Returns the new acknowledged position."""
        with self._lock:
            chat = self._chats[chat_id]
            self._other_client_refresh(chat, time.monotonic() if arrived_at is None else arrived_at)
            return chat.acked_position

    def _switch_alias(self, chat: Chat) -> str:
        chat.alias_switches += 1
        return self._new_alias(chat)

    def _other_client_refresh(self, chat: Chat, arrived_at: float) -> None:
        chat.other_client_refreshes += 1
        self._acknowledge(chat, arrived_at)

    def _acknowledge(self, chat: Chat, arrived_at: float) -> None:
        """What any Refresh tells Chat Server: the triggers sent before it are answered, and the client
        has everything up to now."""
        chat.last_refresh_at = arrived_at
        chat.pending = [p for p in chat.pending if p.sent_at >= arrived_at]
        if not chat.pending:
            self._waiting.discard(chat.chat_id)
        chat.acked_position = max(chat.acked_position, chat.next_position)

    def _new_alias(self, chat: Chat) -> str:
        highest = 999 if len(chat.aliases) < 450 else 999_999  # three digits, until they run short
        alias = str(self._rng.randint(100, highest))
        while alias in chat.aliases:
            alias = str(self._rng.randint(100, highest))
        chat.alias = alias
        chat.aliases.append(alias)
        return alias

    # Trigger bookkeeping, used by the sender -------------------------------------------------------

    def acked_position(self, chat_id: str) -> int:
        with self._lock:
            return self._chats[chat_id].acked_position

    def trigger_state(self, chat_id: str) -> tuple[int, str]:
        """(notify-position, alias) as Chat Server reads them when it sends a trigger."""
        with self._lock:
            chat = self._chats[chat_id]
            return chat.acked_position, chat.alias

    def add_pending(self, trigger: PendingTrigger) -> None:
        with self._lock:
            if self._chats[trigger.chat_id].end_seen:
                return
            self._chats[trigger.chat_id].pending.append(trigger)
            self._waiting.add(trigger.chat_id)

    def take_due(self, now: float, delay_s: float) -> list[PendingTrigger]:
        """Remove and return the pending triggers not acknowledged within `delay_s` of being sent."""
        due: list[PendingTrigger] = []
        with self._lock:
            for chat_id in list(self._waiting):
                chat = self._chats[chat_id]
                if any(p.sent_at + delay_s <= now for p in chat.pending):
                    due.extend(p for p in chat.pending if p.sent_at + delay_s <= now)
                    chat.pending = [p for p in chat.pending if p.sent_at + delay_s > now]
                    if not chat.pending:
                        self._waiting.discard(chat_id)
        return sorted(due, key=lambda p: p.sent_at)

    def next_due(self, delay_s: float) -> float | None:
        with self._lock:
            times = [p.sent_at + delay_s for c in self._waiting for p in self._chats[c].pending]
        return min(times) if times else None

    def pending_count(self) -> int:
        with self._lock:
            return sum(len(self._chats[c].pending) for c in self._waiting)
