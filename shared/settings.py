"""Settings read once from the environment at start-up, never at import time."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from shared.errors import ConfigError


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str = "redis://localhost:6379/0"
    gms_url: str | None = None
    gms_chat_service: str = "customer-support"
    push_token: str | None = None
    api_token: str | None = None
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    push_max_bytes: int = 65536
    log_level: str = "INFO"
    # How long a chat's credentials (userId, secureKey) live without activity. They are secrets, so
    # they go first; 26 h outlives Chat Server's flex-push-timeout of the Genesys guide (86400 s).
    session_idle_ttl_s: int = 26 * 3600
    # How long the rest of a chat's state lives without activity: cursor, alias, device mapping and the
    # ended marker. It must outlive the longest quiet period of a chat, or a late trigger would refresh
    # from position 1 and deliver the transcript again (design invariant 8).
    chat_state_ttl_s: int = 8 * 24 * 3600
    # Single-flight lease on a chat: short against Chat Server's resend delay (>= 1 s), and longer than
    # the work it covers (checked at start-up against the Refresh deadline).
    lease_ttl_ms: int = 1000
    # Deadline of one whole Refresh call (connect, send, one resend on a stale connection, reply).
    refresh_timeout_ms: int = 400
    # Bounded in-worker retries of a failing Refresh (statusCode 1, HTTP 5xx, timeouts).
    refresh_retry_max: int = 6
    refresh_retry_base_ms: int = 50
    stream_maxlen: int = 10000
    # A device's stream expires this long after its last write.
    stream_ttl_s: int = 7 * 24 * 3600
    # Webhook fan-out.
    webhook_timeout_ms: int = 5000
    webhook_batch_max: int = 50
    # A fast first tier (chat platforms retry within seconds), then a long tail over ~2 h (gateways).
    # The tier ramps slowly: a chat's deliveries are ordered, so every step a failing delivery waits
    # holds its whole chat back; a sink that is down is handled by the probe, not by this schedule.
    webhook_retry_schedule_s: tuple[float, ...] = (
        0.1, 0.25, 0.5, 1, 1, 2, 2, 4, 8, 15, 30, 60, 300, 900, 1800, 3600,
    )  # fmt: skip
    # Payload mode: how long a gap in transcript indexes may hold later events back.
    payload_gap_wait_ms: int = 2000


_INT_VARS = {
    "PUSH_MAX_BYTES": "push_max_bytes",
    "SESSION_IDLE_TTL_S": "session_idle_ttl_s",
    "CHAT_STATE_TTL_S": "chat_state_ttl_s",
    "LEASE_TTL_MS": "lease_ttl_ms",
    "REFRESH_TIMEOUT_MS": "refresh_timeout_ms",
    "REFRESH_RETRY_MAX": "refresh_retry_max",
    "REFRESH_RETRY_BASE_MS": "refresh_retry_base_ms",
    "STREAM_MAXLEN": "stream_maxlen",
    "STREAM_TTL_S": "stream_ttl_s",
    "WEBHOOK_TIMEOUT_MS": "webhook_timeout_ms",
    "WEBHOOK_BATCH_MAX": "webhook_batch_max",
    "PAYLOAD_GAP_WAIT_MS": "payload_gap_wait_ms",
}
_STR_VARS = {
    "REDIS_URL": "redis_url",
    "GMS_URL": "gms_url",
    "GMS_CHAT_SERVICE": "gms_chat_service",
    "PUSH_TOKEN": "push_token",
    "API_TOKEN": "api_token",
    "WEBHOOK_SECRET": "webhook_secret",
    "LOG_LEVEL": "log_level",
}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
# Variables of earlier versions: refused with a pointer, so an upgrade never silently ignores them.
_RETIRED_VARS = {
    "ENDED_TTL_S": "ended markers now live CHAT_STATE_TTL_S with the rest of a chat's state",
    "DEDUPE_TTL_S": "repeated triggers are never dropped (a repeat may announce new events)",
}
# A lease must cover a whole Refresh twice over (the call, then claim and commit overheads and a
# chunked commit) plus this margin, so that no two workers ever refresh one chat at once.
LEASE_MARGIN_MS = 200


def _parse_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _parse_seconds(name: str, raw: str) -> float:
    """Positive seconds, fractions allowed (`0.25`)."""
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} entries must be numbers of seconds, got {raw.strip()!r}") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name} entries must be positive, got {raw.strip()!r}")
    return value


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build settings from an environment mapping; a bad value fails naming its variable."""
    values: dict[str, object] = {}
    for var, why in _RETIRED_VARS.items():
        if environ.get(var, "").strip():
            raise ConfigError(f"{var} is no longer used ({why}); remove it")
    for var, field in _STR_VARS.items():
        raw = environ.get(var, "").strip()
        if raw:
            values[field] = raw
    for var, field in _INT_VARS.items():
        raw = environ.get(var, "").strip()
        if raw:
            values[field] = _parse_int(var, raw)
    urls = tuple(u.strip() for u in environ.get("WEBHOOK_URL", "").split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"WEBHOOK_URL entries must be http(s) URLs, got {url!r}")
    values["webhook_urls"] = urls
    schedule = environ.get("WEBHOOK_RETRY_SCHEDULE_S", "").strip()
    if schedule:
        values["webhook_retry_schedule_s"] = tuple(
            _parse_seconds("WEBHOOK_RETRY_SCHEDULE_S", part) for part in schedule.split(",")
        )
    gms_url = values.get("gms_url")
    if isinstance(gms_url, str):
        if not gms_url.startswith(("http://", "https://")):
            raise ConfigError(f"GMS_URL must be an http(s) URL, got {gms_url!r}")
        values["gms_url"] = gms_url.rstrip("/")
    level = str(values.get("log_level", "INFO")).upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {sorted(_LOG_LEVELS)}, got {level!r}")
    values["log_level"] = level
    secret = values.get("webhook_secret")
    if isinstance(secret, str):
        from shared.signing import decode_secret

        decode_secret(secret)  # fail at start-up, not at the first delivery
    settings = Settings(**values)  # type: ignore[arg-type]
    _check_relations(settings)
    return settings


def _check_relations(settings: Settings) -> None:
    """Cross-field rules that a single variable's check cannot see."""
    if settings.session_idle_ttl_s > settings.chat_state_ttl_s:
        raise ConfigError(
            f"SESSION_IDLE_TTL_S ({settings.session_idle_ttl_s}) must not exceed CHAT_STATE_TTL_S "
            f"({settings.chat_state_ttl_s}): a chat's cursor must outlive its credentials"
        )
    floor = 2 * settings.refresh_timeout_ms + LEASE_MARGIN_MS
    if settings.lease_ttl_ms < floor:
        raise ConfigError(
            f"LEASE_TTL_MS ({settings.lease_ttl_ms}) must be at least twice REFRESH_TIMEOUT_MS "
            f"({settings.refresh_timeout_ms}) plus {LEASE_MARGIN_MS} ms, i.e. >= {floor}: a lease "
            "shorter than the work it covers lets two workers refresh one chat at once"
        )
