"""Push bodies as GMS sends them (gms-protocol.md §2), for tests."""

from __future__ import annotations

import json
from typing import Any


def trigger_message(
    position: int | str,
    attempt: int | str = 0,
    session_id: str | None = "s1",
    user_id: str | None = "u1",
    secure_key: str | None = None,
    app_dbid: str | None = None,
) -> dict[str, Any]:
    user_data: dict[str, str] = {"notify-position": str(position), "notify-attempt": str(attempt)}
    if app_dbid is not None:
        user_data["app-dbid"] = app_dbid
    if session_id is not None:
        user_data["session-id"] = session_id
    if user_id is not None:
        user_data["user-id"] = user_id
    if secure_key is not None:
        user_data["secure-key"] = secure_key
    return {
        "messages": [
            {
                "from": {"nickname": "system", "participantId": 0, "type": "External"},
                "index": 7,
                "type": "PushUrl",
                "text": "PUSH-NOTIFICATION",
                "utcTime": 1700000000000,
                "userData": user_data,
            }
        ],
        "chatEnded": False,
        "chatId": "deprecated",
        "userId": "deprecated",
        "secureKey": "COMETD-ONLY-KEY",
    }


def event(index: int, type_: str = "Message", text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "index": index,
        "type": type_,
        "text": text,
        "utcTime": 1700000000000 + index,
        "from": {"nickname": "Ann", "participantId": 2, "type": "Agent"},
        **extra,
    }


def payload_message(
    events: list[dict[str, Any]], chat_id: str | None = "s1", ended: bool = False
) -> dict[str, Any]:
    message: dict[str, Any] = {"messages": events, "chatEnded": ended}
    if chat_id is not None:
        message["chatId"] = chat_id
    return message


def body(message: Any, device_id: str = "d1", encoding: str = "object") -> bytes:
    """A push body with `message` as an object, or as a string holding its JSON."""
    if encoding == "string" and not isinstance(message, str):
        message = json.dumps(message)
    return json.dumps({"deviceId": device_id, "message": message}).encode()
