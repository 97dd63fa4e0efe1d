"""Wire models: what GMS pushes to us, what Chat API v2 answers, and what we store for workers.

GMS adds members between versions, so transcript events are kept as the raw JSON they arrived in
(`Event.raw`) next to the few members the relay reads: a decode/encode round trip loses nothing.
"""

from __future__ import annotations

from typing import Any

import msgspec

Scalar = str | int | float | bool | None


class EventHead(msgspec.Struct):
    """The members of a Chat API v2 transcript event the relay reads."""

    index: int | None = None
    type: str | None = None
    userData: dict[str, Scalar] | None = None


class Participant(msgspec.Struct, omit_defaults=True):
    nickname: str | None = None
    participantId: int | str | None = None
    type: str | None = None


class TranscriptEvent(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Typed view of the documented event members (for readers; the relay forwards `Event.raw`)."""

    index: int
    type: str
    utcTime: int | None = None
    from_: Participant | None = msgspec.field(default=None, name="from")
    text: str | None = None
    messageType: str | None = None
    userData: dict[str, Scalar] | None = None


class Event(msgspec.Struct, frozen=True):
    """A transcript event: its index and type, and its JSON exactly as GMS sent it."""

    index: int
    type: str
    raw: msgspec.Raw

    def typed(self) -> TranscriptEvent:
        return msgspec.json.decode(self.raw, type=TranscriptEvent)


class PushBody(msgspec.Struct):
    """The customhttp POST body: `deviceId` and a `message` that is an object or a string."""

    deviceId: str
    message: msgspec.Raw = msgspec.Raw(b"")


class PushMessage(msgspec.Struct):
    """`message` when it is (or holds) a JSON object. Its `secureKey` is deliberately not read."""

    messages: list[msgspec.Raw] | None = None
    chatEnded: bool | None = None
    chatId: str | int | None = None
    userId: str | int | None = None
    alias: str | int | None = None
    nextPosition: int | None = None
    userData: dict[str, Scalar] | None = None


class ChatResponse(msgspec.Struct):
    """A Chat API v2 response (Refresh, Request Chat, Send)."""

    statusCode: int = 0
    chatEnded: bool = False
    chatId: str | int | None = None
    userId: str | int | None = None
    secureKey: str | None = None
    alias: str | int | None = None
    nextPosition: int | None = None
    messages: list[msgspec.Raw] = msgspec.field(default_factory=list)
    errors: list[dict[str, Any]] | None = None


class SessionRegistration(msgspec.Struct, forbid_unknown_fields=False):
    """Body of `PUT /sessions/{sessionId}`."""

    deviceId: str
    userId: str
    secureKey: str
    alias: str | int | None = None
    service: str | None = None


# Classified notifications -------------------------------------------------------------------------


class Trigger(msgspec.Struct, frozen=True, kw_only=True):
    """Reliable-mode PushUrl trigger: "call Refresh for this chat"."""

    device_id: str
    session_id: str | None
    position: int
    attempt: int
    user_id: str | None = None
    secure_key: str | None = None
    # userData `app-dbid`: "App DBID (or alias) to be used with GMS REST API" (when flex-push-content
    # includes it). The alias until a Refresh response gives a newer one.
    app_dbid: str | None = None


class Payload(msgspec.Struct, frozen=True, kw_only=True):
    """Payload-mode push: the events themselves."""

    device_id: str
    session_id: str | None
    events: tuple[Event, ...]
    chat_ended: bool = False
    alias: str | None = None


class WakeUp(msgspec.Struct, frozen=True, kw_only=True):
    """Wake-up push: only the device means anything."""

    device_id: str
    text: str


Notification = Trigger | Payload | WakeUp

PUSH_BODY_DECODER = msgspec.json.Decoder(PushBody)
PUSH_MESSAGE_DECODER = msgspec.json.Decoder(PushMessage)
EVENT_HEAD_DECODER = msgspec.json.Decoder(EventHead)
CHAT_RESPONSE_DECODER = msgspec.json.Decoder(ChatResponse)
STRING_DECODER = msgspec.json.Decoder(str)
