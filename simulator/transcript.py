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
from typing import Any, Literal, NamedTuple

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
    payload_as_string: bool | None = None  # None: the sender picks at random per push
    events: list[dict[str, Any]] = field(default_factory=list)
    nicknames: dict[Who, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)  # every alias the chat has had, oldest first
    ended: bool = False
    agent_disconnected: bool = False  # refreshes answer HTTP 400 from now on
    acked_position: int = 1  # first transcript index not yet acknowledged by a successful Refresh
    pending: list[PendingTrigger] = field(default_factory=list)
    refresh_count: int = 0
    last_refresh_at: float | None = None
    # A Refresh returned chatEnded: the client has the whole chat and Chat Server closes the session,
    # so triggers still in flight for it are never resent.
    end_seen: bool = False

    @property
    def next_position(self) -> int:
        return len(self.events) + 1


class RefreshResult(NamedTuple):
    events: list[dict[str, Any]]
    next_position: int
    chat_ended: bool
    alias: str


Listener = Callable[[Chat, list[dict[str, Any]]], None]


def now_ms() -> int:
    return int(time.time() * 1000)


class ChatStore:
    """All simulated chats, keyed by chat id (the relay's session id)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._chats: dict[str, Chat] = {}
        self._listeners: list[Listener] = []
        self._waiting: set[str] = set()  # chats with pending triggers, so resend scans stay small
        self._rng = rng or random.Random()

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def create_chat(
        self, *, service: str, nickname: str, device_id: str, mode: Mode, flex_secure_key: bool = False
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
            nicknames={"customer": nickname, "agent": "Anna", "system": "system"},
            aliases=[alias],
        )
        with self._lock:
            self._chats[chat.chat_id] = chat
        self.append(chat.chat_id, [EventSpec("ParticipantJoined", "customer")], notify=False)
        return chat

    def configure(self, chat_id: str, **options: Any) -> None:
        """Set per-chat options such as `flex_secure_key` or `payload_as_string`."""
        with self._lock:
            chat = self._chats[chat_id]
            for name, value in options.items():
                if name not in ("flex_secure_key", "payload_as_string"):
                    raise ValueError(f"unknown chat option {name!r}")
                setattr(chat, name, value)

    def get(self, chat_id: str, *, with_events: bool = True) -> Chat | None:
        """A copy of the chat, safe to read without the lock; `with_events=False` leaves the transcript
        and pending triggers out (cheap: what the Chat API needs to check a call)."""
        with self._lock:
            chat = self._chats.get(chat_id)
            if chat is None:
                return None
            if with_events:
                return copy.deepcopy(chat)
            return replace(
                chat, events=[], pending=[], nicknames=dict(chat.nicknames), aliases=list(chat.aliases)
            )

    def chat_ids(self) -> list[str]:
        with self._lock:
            return list(self._chats)

    def append(
        self, chat_id: str, specs: Iterable[EventSpec], *, notify: bool = True
    ) -> list[dict[str, Any]]:
        """Append events (indexes from 1, in order) and hand them to the listeners as one batch."""
        with self._lock:
            chat = self._chats[chat_id]
            added: list[dict[str, Any]] = []
            for spec in specs:
                added.append(self._event(chat, spec))
                chat.events.append(added[-1])
            if notify and added:
                for listener in self._listeners:
                    listener(chat, copy.deepcopy(added))
            return copy.deepcopy(added)

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
            chat.last_refresh_at = arrived_at
            chat.pending = [p for p in chat.pending if p.sent_at >= arrived_at]
            if not chat.pending:
                self._waiting.discard(chat_id)
            chat.acked_position = max(chat.acked_position, chat.next_position)
            if chat.ended:
                chat.end_seen = True
                chat.pending = []
                self._waiting.discard(chat_id)
            if change_alias:
                chat.alias = str(self._rng.randint(100, 999))
                while chat.alias in chat.aliases:
                    chat.alias = str(self._rng.randint(100, 999))
                chat.aliases.append(chat.alias)
            # Events are never changed once appended, so the same dicts can be handed out.
            events = chat.events[position - 1 :]
            return RefreshResult(events, chat.next_position, chat.ended, chat.alias)

    # Trigger bookkeeping, used by the sender -------------------------------------------------------

    def acked_position(self, chat_id: str) -> int:
        with self._lock:
            return self._chats[chat_id].acked_position

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
