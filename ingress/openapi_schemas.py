"""The OpenAPI document's components: request and reply schemas, error replies, security schemes.

Apart from `ingress/openapi.py` (the operations) only to keep each module short. The limits stated
here are the constants the code enforces, imported from where they live.
"""

from __future__ import annotations

from typing import Any

from shared.classify import MAX_ID_CHARS, MAX_POSITION
from shared.errors import (
    InvalidJson,
    InvalidPush,
    PayloadTooLarge,
    RedisUnavailable,
    TooManyFailures,
    Unauthorized,
)

# What `POST /push` answers with 200, and why (README "HTTP API").
PUSH_OUTCOMES = {
    "queued": "stored; a Refresh that starts after this push will follow (or the events are staged)",
    "duplicate": "a payload push whose events are all delivered or staged already",
    "late": "a payload push with events whose gap was already skipped: acknowledged, not delivered",
    "covered": "a trigger whose position a Refresh already passed",
    "ended": "the chat is over",
    "wakeup": "a wake-up push (or a trigger naming no chat): a `device.wakeup` is emitted",
}
# Each error status of the push, session and health routes, with the `error` codes it carries there
# (the parts of the document beside their routes, e.g. ingress/openapi_chats.py, add theirs).
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: (InvalidJson.code, InvalidPush.code),
    401: (Unauthorized.code,),
    404: ("not_found",),
    405: ("method_not_allowed",),
    409: ("session_ended",),
    413: (PayloadTooLarge.code,),
    429: (TooManyFailures.code,),
    503: (RedisUnavailable.code,),
}
WHY = {
    400: "The request is malformed: not JSON (`invalid_json`) or not the expected shape (`detail` names "
    "the offending member). Nothing is stored.",
    401: "Missing or wrong token.",
    404: "Disabled by configuration (the operation says which setting), or no such path.",
    405: "This path does not serve this method; `Allow` lists the ones it does.",
    409: "The chat has already ended; nothing is stored.",
    413: "The body is larger than the limit; it is not read past it. Nothing is stored.",
    429: "`too_many_failures`: 20 failed authentications from this address within a minute (every "
    "token-checked route counts); every request from it is refused until the minute is over, right "
    "token or not. Other codes: a limit the operation describes.",
    503: "`redis_unavailable`: Redis is unreachable or stuck (answered within 200 ms); nothing is "
    "stored. Other codes: a limit the operation describes.",
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_reply(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def status_reply(*values: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": list(values)}},
    }


def error_response(status: int, codes: tuple[str, ...], why: str) -> dict[str, Any]:
    """The reply `{"error", "detail"}` of one status, `error` being one of its codes."""
    schema = {"allOf": [ref("Error"), {"properties": {"error": {"enum": list(codes)}}}]}
    reply = json_reply(schema, why)
    if status == 405:
        reply["headers"] = {
            "Allow": {"description": "the methods this path serves", "schema": {"type": "string"}}
        }
    return reply


IDENTIFIER = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_CHARS,
    "description": f"1 to {MAX_ID_CHARS} printable characters (Python's `str.isprintable`).",
}
_SCALAR = {"type": ["string", "integer", "number", "boolean", "null"]}
_ID_OR_NUMBER = {"type": ["string", "integer", "null"]}
_USER_DATA = {"anyOf": [ref("TriggerUserData"), {"type": "null"}]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "description": "stable machine-readable code"},
            "detail": {"type": "string", "description": "human-readable explanation"},
        },
    },
    "PushBody": {
        "type": "object",
        "description": "The GMS customhttp POST body (gms-protocol.md section 1). Other members are ignored.",
        "required": ["deviceId"],
        "properties": {
            "deviceId": {**IDENTIFIER, "description": "`userData[GCTI_GMS_PushDeviceId]` of the chat."},
            "message": {
                "description": "An object; a string holding the same object as JSON; or plain text "
                "such as GMS's `customhttp.message` (a wake-up). Absent: a wake-up with empty text.",
                "anyOf": [ref("PushMessage"), {"type": "string"}],
            },
        },
    },
    "PushMessage": {
        "type": "object",
        "description": "`message` as an object. With `messages` holding a `PushUrl` event: a reliable "
        "trigger; with other events: a payload; without `messages`: a wake-up. Other members "
        "(`secureKey`, CometD-only, among them) are ignored.",
        "properties": {
            "messages": {"type": ["array", "null"], "items": ref("PushEvent")},
            "chatEnded": {"type": ["boolean", "null"]},
            "chatId": {
                **_ID_OR_NUMBER,
                "description": "The chat (after `userData.session-id`); `deprecated` means none.",
            },
            "userId": _ID_OR_NUMBER,
            "alias": _ID_OR_NUMBER,
            "nextPosition": {"type": ["integer", "null"]},
            "userData": _USER_DATA,
        },
    },
    "PushEvent": {
        "type": "object",
        "description": "A Chat API v2 transcript event, kept and forwarded with every member it has. "
        "A `PushUrl` event makes the push a trigger (then `notify-position` is required, in its "
        "`userData` or the message's); any other event needs `index` and `type`.",
        "properties": {
            "index": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_POSITION},
            "type": {"type": ["string", "null"], "examples": ["PushUrl", "Message", "ParticipantLeft"]},
            "userData": _USER_DATA,
            "utcTime": {"description": "milliseconds since the epoch"},
            "text": {},
            "from": {"description": "`{nickname, participantId, type}`"},
        },
    },
    "TriggerUserData": {
        "type": "object",
        "description": "userData of a trigger (what `flex-push-content` includes). Values are scalars.",
        "additionalProperties": _SCALAR,
        "properties": {
            "notify-position": {
                "type": ["string", "integer"],
                "description": f"An integer, or a string holding one, in -1..{MAX_POSITION}; -1: the "
                "customer was removed from the chat (it ends after one last Refresh).",
            },
            "notify-attempt": {
                "type": ["string", "integer"],
                "description": f"0..{MAX_POSITION}: 0 for the first send, then each resend's number.",
            },
            "session-id": {**_SCALAR, "description": "the chat; `deprecated` or empty means none"},
            "user-id": _SCALAR,
            "secure-key": {**_SCALAR, "description": "the Chat API v2 REST key (the only one read)"},
            "app-dbid": {**_SCALAR, "description": "the Refresh alias until a Refresh gives a newer one"},
        },
    },
    "PushReply": {
        **status_reply(*PUSH_OUTCOMES),
        "description": "\n".join(f"- `{name}`: {why}" for name, why in PUSH_OUTCOMES.items()),
    },
    "SessionRegistration": {
        "type": "object",
        "description": "Credentials of a chat whose triggers carry no secure key. Other members are ignored.",
        "required": ["deviceId", "userId", "secureKey"],
        "properties": {
            "deviceId": IDENTIFIER,
            "userId": IDENTIFIER,
            "secureKey": IDENTIFIER,
            "alias": {
                **_ID_OR_NUMBER,
                "description": "from Request Chat; used until a trigger's `app-dbid` or a Refresh "
                "response gives one",
            },
            "service": {
                "type": ["string", "null"],
                "description": "Chat API v2 service; absent, null or empty: `GMS_CHAT_SERVICE`",
            },
        },
    },
}

SECURITY_SCHEMES = {
    "pushQueryToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "`PUSH_TOKEN` as `?token=` (GMS can only carry a token in its URL). One `token` "
        "per request.",
    },
    "pushBearer": {"type": "http", "scheme": "bearer", "description": "`PUSH_TOKEN` as a bearer token."},
    "pushBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "`PUSH_TOKEN` as the basic-auth password (any user name), e.g. "
        "`https://gms:TOKEN@relay/push` in `customhttp.url`.",
    },
    "apiBearer": {"type": "http", "scheme": "bearer", "description": "`API_TOKEN` as a bearer token."},
}
