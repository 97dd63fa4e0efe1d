"""The OpenAPI description of the device endpoints (device streams, token minting), merged into the
ingress's document by ingress/openapi.py.

Kept beside the endpoints it describes so that their limits, codes and names come from the code that
enforces them (`BODY_MAX_BYTES`, the settings), and so that the document module stays small.
"""

from __future__ import annotations

from typing import Any

from ingress.device_tokens_api import BODY_MAX_BYTES
from shared.classify import MAX_ID_CHARS
from shared.settings import Settings

TAG = "devices"
# The `error` codes each status of these endpoints can carry (merged into the document's table).
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("invalid_json", "invalid_request", "invalid_last_event_id"),
    401: ("unauthorized",),
    403: ("forbidden",),
    404: ("not_found",),
    413: ("payload_too_large",),
    429: ("too_many_failures", "too_many_device_streams"),
    503: ("too_many_streams", "redis_unavailable"),
}
# Why a status is answered, for the statuses the rest of the document does not use.
WHY: dict[int, str] = {
    403: "A genuine device token, but not this device's (`forbidden`).",
}

SCHEMAS: dict[str, Any] = {
    "DeviceTokenRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "ttlS": {
                "type": "integer",
                "minimum": 1,
                "description": "Lifetime in seconds, at most `DEVICE_TOKEN_TTL_S` (the default).",
            }
        },
    },
    "DeviceToken": {
        "type": "object",
        "required": ["token", "expiresAt"],
        "properties": {
            "token": {"type": "string", "description": "For this device only; send it as a bearer token"},
            "expiresAt": {
                "type": "string",
                "format": "date-time",
                "description": "UTC, e.g. 2026-01-01T00:00:00Z",
            },
        },
    },
    "DeviceEvent": {
        "type": "object",
        "description": "The `data:` of each SSE message (its `id:` is the Redis stream entry id): the "
        "stream entry's fields. `data` is the event itself: a GMS transcript event as GMS sent it, or "
        "the body of `chat.ended`, `chat.credentials_required`, `device.wakeup`.",
        "required": ["type", "data"],
        "properties": {
            "type": {"type": "string", "description": "transcript event type, or chat.ended, ..."},
            "sessionId": {"type": "string", "description": "absent for device.wakeup"},
            "index": {"type": "integer", "description": "transcript events only"},
            "data": {},
        },
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
    "deviceBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A device token (`POST /devices/{deviceId}/tokens`) for the device in the path.",
    },
    "deviceQueryToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "The device token as `?token=` (EventSource cannot set headers). One per request.",
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/Error{status}"} for status in statuses}


def paths(settings: Settings) -> dict[str, Any]:
    """The two paths for an ingress running with `settings` (disabled ones say so)."""
    device_id = {
        "name": "deviceId",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
        "description": "The device id GMS pushes for (`GCTI_GMS_PushDeviceId`).",
    }
    off = " Disabled here (`DEVICE_TOKEN_SECRET` unset): every request is 404."
    streams_off = "" if settings.device_token_secret else off
    minting_off = (
        ""
        if settings.device_token_secret and settings.api_token
        else off.replace("`DEVICE_TOKEN_SECRET` unset", "`DEVICE_TOKEN_SECRET` or `API_TOKEN` unset")
    )
    resume = {
        "name": "lastEventId",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": r"^\d+(-\d+)?$"},
        "description": "Resume after this entry id (a `Last-Event-ID` header wins over it).",
    }
    header = {**resume, "name": "Last-Event-ID", "in": "header", "description": "Resume after this entry id."}
    return {
        "/devices/{deviceId}/tokens": {
            "description": "Device tokens (Bearer `API_TOKEN`)." + minting_off,
            "parameters": [device_id],
            "post": {
                "operationId": "mintDeviceToken",
                "summary": "Mint a token that opens this device's event stream",
                "description": f"Stateless (HMAC-SHA256 over the device id and expiry). The body is "
                f"optional and at most {BODY_MAX_BYTES} bytes.",
                "tags": [TAG],
                "security": [{"apiBearer": []}],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/DeviceTokenRequest"}}
                    },
                },
                "responses": {
                    "201": {
                        "description": "Minted.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/DeviceToken"}}
                        },
                    },
                    **_errors(400, 401, 404, 413, 429),
                },
            },
        },
        "/devices/{deviceId}/events": {
            "description": "The device's Redis stream as Server-Sent Events." + streams_off,
            "parameters": [device_id],
            "get": {
                "operationId": "deviceEvents",
                "summary": "Stream the device's events (Server-Sent Events), resumable",
                "description": "From the start of what the stream holds (or after the resume id), then "
                "live. Each message: `id:` the entry id, `data:` a DeviceEvent, no `event:` line. A resume "
                "id older than the stream's first entry first gets `event: gap` with data "
                '`{"lastEventId", "firstId"}`. `:` comment heartbeats every `SSE_HEARTBEAT_S` '
                f"({settings.sse_heartbeat_s} s). At most `SSE_MAX_CONNECTIONS` "
                f"({settings.sse_max_connections}) streams per process (503) and "
                f"{settings.sse_device_max_connections} per device (429).",
                "tags": [TAG],
                "security": [{"deviceBearer": []}, {"deviceQueryToken": []}],
                "parameters": [resume, header],
                "responses": {
                    "200": {
                        "description": "The stream (it does not end while the client stays).",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 403, 404, 429, 503),
                },
            },
        },
    }
