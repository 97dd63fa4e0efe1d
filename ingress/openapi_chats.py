"""The OpenAPI description of `POST /chats`, the chat actions and `GET /demo`, merged into the ingress's
document by ingress/openapi.py (as ingress/openapi_devices.py is).

Kept beside the endpoints it describes so that their limits and codes are the constants ingress/chats.py
enforces, and the settings of the running ingress (a disabled endpoint says so).
"""

from __future__ import annotations

from typing import Any

from ingress.chats import (
    ACTIONS,
    CHAT_BODY_MAX_BYTES,
    NICKNAME_MAX_CHARS,
    SUBJECT_MAX_CHARS,
    TEXT_MAX_CHARS,
    USER_DATA_MAX_ENTRIES,
    USER_DATA_VALUE_MAX_CHARS,
)
from shared.classify import MAX_ID_CHARS
from shared.errors import ChatEnded, Forbidden, GmsRefused, GmsUnavailable
from shared.settings import Settings

TAG = "chats"
# The `error` codes each status of these endpoints can carry (merged into the document's table).
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("invalid_json", "invalid_push"),
    401: ("unauthorized",),
    403: (Forbidden.code,),
    404: ("not_found",),
    409: (ChatEnded.code,),
    413: ("payload_too_large",),
    429: ("too_many_failures", "rate_limited"),
    502: (GmsUnavailable.code, GmsRefused.code),
    503: ("redis_unavailable",),
}
# Why a status is answered, for the statuses the rest of the document does not use.
WHY: dict[int, str] = {
    502: "GMS did not answer within `CHAT_API_TIMEOUT_MS`, answered 5xx or statusCode 1 "
    "(`gms_unavailable`: try again), or refused (`gms_refused`). GMS's own text is never passed on.",
}
_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]{1,64}$"}

SCHEMAS: dict[str, Any] = {
    "ChatStart": {
        "type": "object",
        "additionalProperties": False,
        "required": ["nickname"],
        "properties": {
            "nickname": {"type": "string", "minLength": 1, "maxLength": NICKNAME_MAX_CHARS},
            "subject": {"type": "string", "minLength": 1, "maxLength": SUBJECT_MAX_CHARS},
            "userData": {
                "type": "object",
                "maxProperties": USER_DATA_MAX_ENTRIES,
                "propertyNames": _NAME,
                "additionalProperties": {"type": "string", "maxLength": USER_DATA_VALUE_MAX_CHARS},
                "description": "Passed to Request Chat as `userData[key]`. Keys starting with "
                "`GCTI_Chat_Push`, `GCTI_GMS_Push`, `GCTI_GMS_NotifyRequestor` or `GCTI_GMS_NodeGroup` are "
                "the relay's own (400).",
            },
            "service": {**_NAME, "description": "Chat API v2 service (default `GMS_CHAT_SERVICE`)"},
            "mode": {"type": "string", "enum": ["reliable", "payload"], "default": "reliable"},
        },
    },
    "ChatStarted": {
        "type": "object",
        "required": ["chatId", "deviceId", "token", "eventsUrl"],
        "properties": {
            "chatId": {"type": "string", "description": "GMS's chat id (the relay's session id)"},
            "deviceId": {"type": "string", "description": "the unguessable device id GMS pushes for"},
            "token": {"type": "string", "description": "device token: the stream and this chat's actions"},
            "eventsUrl": {"type": "string", "description": "`/devices/{deviceId}/events`"},
        },
    },
    "ChatMessage": {
        "type": "object",
        "additionalProperties": False,
        "required": ["text"],
        "properties": {"text": {"type": "string", "minLength": 1, "maxLength": TEXT_MAX_CHARS}},
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
    "chatStartBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`CHAT_START_TOKEN`, when it is set.",
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/Error{status}"} for status in statuses}


def paths(settings: Settings) -> dict[str, Any]:
    """`/chats`, `/chats/{chatId}/{action}` for each action, and `/demo` when DEMO=true."""
    enabled = settings.device_token_secret is not None and settings.gms_url is not None
    off = (
        "" if enabled else " Disabled here (`DEVICE_TOKEN_SECRET` or `GMS_URL` unset): every request is 404."
    )
    public = settings.chat_start_token is None
    start_security: list[dict[str, list[str]]] = [{}] if public else [{"chatStartBearer": []}]
    limit = (
        f" Public, rate-limited per client address: {settings.chat_start_burst} chats at once, then "
        f"{settings.chat_start_rate_per_min} a minute (429 `rate_limited` with `Retry-After`)."
        if public
        else " Requires `CHAT_START_TOKEN` as a bearer token."
    )
    body = f" The body is at most {CHAT_BODY_MAX_BYTES} bytes."
    found: dict[str, Any] = {
        "/chats": {
            "description": "Start a chat through the relay." + off,
            "post": {
                "operationId": "startChat",
                "summary": "GMS Request Chat with the push userData built in; credentials registered",
                "description": "The secure key never leaves the relay: the reply's `token` (a device "
                "token) opens `eventsUrl` and authorises this chat's actions." + limit + body,
                "tags": [TAG],
                "security": start_security,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatStart"}}},
                },
                "responses": {
                    "201": {
                        "description": "Started and registered.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ChatStarted"}}
                        },
                    },
                    **_errors(400, *(() if public else (401,)), 404, 413, 429, 502, 503),
                },
            },
        }
    }
    chat_id = {
        "name": "chatId",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
    }
    what = {"messages": "Send a message (Chat API Send)", "typing": "The customer is typing (startTyping)",
            "disconnect": "Leave the chat (Disconnect)"}  # fmt: skip
    for action in ACTIONS:
        operation: dict[str, Any] = {
            "operationId": f"chat{action.capitalize()}",
            "summary": what[action],
            "description": "With the device token of the chat's device, forwarded with the stored "
            "credentials and the chat's current alias." + (body if action == "messages" else ""),
            "tags": [TAG],
            "security": [{"deviceBearer": []}],
            "responses": {
                "204": {"description": "GMS accepted it; the event arrives on the device stream."},
                **_errors(*((400, 413) if action == "messages" else ()), 401, 403, 404, 409, 429, 502, 503),
            },
        }
        if action == "messages":
            schema = {"$ref": "#/components/schemas/ChatMessage"}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        found[f"/chats/{{chatId}}/{action}"] = {
            "description": off.strip(),
            "parameters": [chat_id],
            "post": operation,
        }
    if settings.demo:
        found["/demo"] = {
            "get": {
                "operationId": "demoPage",
                "summary": "The demo customer chat page (DEMO=true)",
                "tags": [TAG],
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        }
    return found
