"""Turn a raw push body into exactly one of: trigger, payload events, wake-up, or a precise 400.

Liberal in what it accepts (gms-protocol.md): `message` may be an object, a string holding JSON, or
plain text; Content-Type is ignored. Strict about what the pipeline relies on: positions, indexes and
identifiers are checked here so that nothing malformed is ever queued.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from shared.errors import InvalidJson, InvalidPush
from shared.models import (
    EVENT_HEAD_DECODER,
    PUSH_BODY_DECODER,
    PUSH_MESSAGE_DECODER,
    STRING_DECODER,
    Event,
    Notification,
    Payload,
    PushMessage,
    Scalar,
    Trigger,
    WakeUp,
)

MAX_ID_CHARS = 256
MAX_POSITION = 2**31 - 1
PUSH_URL = "PushUrl"
_DEPRECATED = "deprecated"
T = TypeVar("T")


def classify(body: bytes) -> Notification:
    """Classify one push body. Raises InvalidJson or InvalidPush with a human-readable detail."""
    try:
        body.decode()  # msgspec skips members we do not read; those reach streams and webhooks too
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    push = _decode(PUSH_BODY_DECODER, body, "")
    device_id = _identifier(push.deviceId, "deviceId")
    raw_message = bytes(push.message)
    if not raw_message:
        return WakeUp(device_id=device_id, text="")
    first = raw_message[:1]
    if first == b"{":
        return _from_object(device_id, _decode(PUSH_MESSAGE_DECODER, raw_message, "message"))
    if first == b'"':
        text = _decode(STRING_DECODER, raw_message, "message")
        if text.lstrip().startswith("{"):
            try:
                message = PUSH_MESSAGE_DECODER.decode(text.encode())
            except (msgspec.DecodeError, RecursionError):
                return WakeUp(device_id=device_id, text=text)  # plain text that merely starts with "{"
            except msgspec.ValidationError as exc:
                raise InvalidPush(_locate(str(exc), "message")) from None
            return _from_object(device_id, message)
        return WakeUp(device_id=device_id, text=text)
    raise InvalidPush("message: expected an object or a string")


def _decode(decoder: msgspec.json.Decoder[T], data: bytes, where: str) -> T:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidPush(_locate(str(exc), where)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidJson(_locate(f"body is not valid JSON: {exc}", where)) from None
    except RecursionError:
        raise InvalidJson(_locate("JSON is nested too deeply", where)) from None


def _locate(detail: str, where: str) -> str:
    if not where:
        return detail
    return f"{detail.replace('`$', f'`$.{where}')}" if "`$" in detail else f"{where}: {detail}"


def _identifier(value: str, name: str) -> str:
    if not value or len(value) > MAX_ID_CHARS or not value.isprintable():
        raise InvalidPush(f"{name}: expected 1 to {MAX_ID_CHARS} printable characters")
    return value


def _optional_id(value: Scalar | None, name: str) -> str | None:
    if value is None or isinstance(value, bool | float):
        return None
    text = str(value).strip()
    if not text or text.lower() == _DEPRECATED:
        return None
    return _identifier(text, name)


def _integer(value: Scalar | None, name: str, low: int) -> int:
    if isinstance(value, bool) or value is None:
        raise InvalidPush(f"{name}: expected an integer")
    try:
        number = int(value.strip()) if isinstance(value, str) else int(value)
    except ValueError:
        raise InvalidPush(f"{name}: expected an integer, got {str(value)[:40]!r}") from None
    if isinstance(value, float) and number != value:
        raise InvalidPush(f"{name}: expected an integer")
    if not low <= number <= MAX_POSITION:
        raise InvalidPush(f"{name}: {number} is outside {low}..{MAX_POSITION}")
    return number


def _from_object(device_id: str, message: PushMessage) -> Notification:
    if message.messages is None:
        return WakeUp(device_id=device_id, text=msgspec.json.encode(message).decode())
    events: list[Event] = []
    for position, raw in enumerate(message.messages):
        where = f"messages[{position}]"
        head = _decode(EVENT_HEAD_DECODER, bytes(raw), f"message.{where}")
        if head.type == PUSH_URL:
            return _trigger(device_id, message, head.userData or {})
        if head.index is None or head.type is None:
            raise InvalidPush(f"message.{where}: a payload event needs `index` and `type`")
        if not 0 <= head.index <= MAX_POSITION:
            raise InvalidPush(f"message.{where}.index: {head.index} is outside 0..{MAX_POSITION}")
        events.append(Event(head.index, head.type, raw))
    return Payload(
        device_id=device_id,
        session_id=_optional_id(message.chatId, "message.chatId"),
        events=tuple(events),
        chat_ended=bool(message.chatEnded),
        alias=None if message.alias is None else str(message.alias),
    )


def _trigger(device_id: str, message: PushMessage, event_data: dict[str, Scalar]) -> Trigger:
    data = {**(message.userData or {}), **event_data}
    if "notify-position" not in data:
        raise InvalidPush("message.messages[].userData: a PushUrl trigger needs `notify-position`")
    position = _integer(data["notify-position"], "notify-position", -1)
    attempt = _integer(data.get("notify-attempt", 0), "notify-attempt", 0)
    session_id = _optional_id(data.get("session-id"), "session-id") or _optional_id(
        message.chatId, "message.chatId"
    )
    user_id = _optional_id(data.get("user-id"), "user-id") or _optional_id(message.userId, "message.userId")
    secure_key = data.get("secure-key")
    app_dbid = _optional_id(data.get("app-dbid"), "app-dbid")
    return Trigger(
        device_id=device_id,
        session_id=session_id,
        position=position,
        attempt=attempt,
        user_id=user_id,
        # Only the userData secure key is a REST key; message.secureKey is CometD-only and never read.
        secure_key=str(secure_key) if isinstance(secure_key, str) and secure_key else None,
        app_dbid=app_dbid,
    )
