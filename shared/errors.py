"""The relay's error family; the ingress maps each to one HTTP reply."""

from __future__ import annotations


class RelayError(Exception):
    """Base of errors that carry a stable machine-readable code."""

    code = "error"
    status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigError(RelayError):
    code = "config"


class InvalidJson(RelayError):
    code = "invalid_json"
    status = 400


class InvalidPush(RelayError):
    code = "invalid_push"
    status = 400


class Unauthorized(RelayError):
    code = "unauthorized"
    status = 401


class TooManyFailures(RelayError):
    code = "too_many_failures"
    status = 429


class PayloadTooLarge(RelayError):
    code = "payload_too_large"
    status = 413


class RedisUnavailable(RelayError):
    code = "redis_unavailable"
    status = 503


class NotReplicated(RelayError):
    """The primary holds the write but no replica confirmed it in time (INGRESS_ACK=replicated): not
    acknowledged, so GMS counts a failure and Chat Server resends (a resend is idempotent)."""

    code = "not_replicated"
    status = 503


# The chat endpoints (POST /chats and its actions, ingress/chats.py).
class Forbidden(RelayError):
    code = "forbidden"
    status = 403


class ChatEnded(RelayError):
    code = "chat_ended"
    status = 409


class GmsUnavailable(RelayError):
    code = "gms_unavailable"
    status = 502


class GmsRefused(RelayError):
    code = "gms_refused"
    status = 502
