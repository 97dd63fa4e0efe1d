"""POST /devices/{deviceId}/tokens: the operator's backend (holding API_TOKEN) mints a device token.

The app's server calls this when its user's device needs to read its own events; the device then
presents the token to `GET /devices/{deviceId}/events`. Tokens are stateless (shared/device_tokens.py),
so minting writes nothing and needs no Redis.
"""

from __future__ import annotations

import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ingress.auth import FailureThrottle, bearer_ok
from ingress.replies import error_body
from shared import device_tokens
from shared.settings import Settings

# The body is at most `{"ttlS": <number>}`: anything bigger is not a token request.
BODY_MAX_BYTES = 1024


class TokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ttlS: int | None = None


_REQUEST = msgspec.json.Decoder(TokenRequest)


def _json(status: int, body: bytes) -> Response:
    # A token is a credential: no cache along the way may keep the reply.
    return Response(body, status, headers={"Cache-Control": "no-store"}, media_type="application/json")


def _error(status: int, code: str, detail: str) -> Response:
    return _json(status, error_body(code, detail))


def iso_utc(unix_s: int) -> str:
    """`2026-01-01T00:00:00Z`, the timestamp format of the webhook bodies."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


class DeviceTokenRoutes:
    """Mints tokens; failed API_TOKEN guesses count towards the same per-address limit as /push."""

    def __init__(self, settings: Settings, throttle: FailureThrottle) -> None:
        self.settings = settings
        self.api_token = settings.api_token
        secret = settings.device_token_secret
        self.secrets = device_tokens.signing_keys(secret) if secret else ()
        self.throttle = throttle

    async def handle(self, request: Request) -> Response:
        if not self.secrets or self.api_token is None:
            return _error(
                404, "not_found", "device tokens are disabled (DEVICE_TOKEN_SECRET or API_TOKEN unset)"
            )
        address = request.client.host if request.client else ""
        if self.throttle.blocked(address):
            return _error(429, "too_many_failures", "too many failed authentications")
        if not bearer_ok(self.api_token, request.headers.get("authorization")):
            self.throttle.failed(address)
            return _error(401, "unauthorized", "missing or wrong API token")
        device_id = request.path_params["device_id"]
        if not device_tokens.valid_device_id(device_id):
            return _error(400, "invalid_request", "deviceId: expected 1 to 256 printable characters")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > BODY_MAX_BYTES:
                return _error(413, "payload_too_large", f"body exceeds {BODY_MAX_BYTES} bytes")
        ttl_s = self.settings.device_token_ttl_s
        if body.strip():
            try:
                wanted = _REQUEST.decode(body).ttlS
            except msgspec.ValidationError as exc:
                return _error(400, "invalid_request", str(exc))
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                return _error(400, "invalid_json", "body is not valid JSON")
            if wanted is not None:
                if not 0 < wanted <= ttl_s:
                    return _error(
                        400, "invalid_request", f"ttlS must be between 1 and DEVICE_TOKEN_TTL_S ({ttl_s})"
                    )
                ttl_s = wanted
        token, expires_at = device_tokens.issue(self.secrets, device_id, ttl_s, time.time())
        return _json(201, msgspec.json.encode({"token": token, "expiresAt": iso_utc(expires_at)}))
