"""Settings read once from the environment at start-up, never at import time.

Every field is set by the environment variable of its name in upper case (`lease_ttl_ms` by
`LEASE_TTL_MS`); the README's configuration tables list them. Tunables that operators rarely touch live
here too, with their defaults, so that no module hides a number of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from shared.errors import ConfigError

DAY_S = 24 * 3600


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str = "redis://localhost:6379/0"
    # Sentinel: when set, every client asks these (host, port) for the primary of the master named
    # REDIS_SENTINEL_MASTER at each (re)connect, and follows it through a failover; REDIS_URL then
    # gives only the password, username, db and TLS (shared/redis_clients.py).
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str | None = None
    # What a 200 from the ingress promises: `stored` (the primary holds the push), `replicated` (a
    # replica confirmed it too, WAIT 1), `replicated+fsynced` (WAITAOF 1 1: in the append-only file of
    # the primary and of a replica; Redis >= 7.2). Not confirmed within the timeout: 503, GMS resends.
    ingress_ack: str = "stored"
    replica_ack_timeout_ms: int = 50
    # With Sentinel, each process asks this often whether the primary moved: after a planned failover
    # the old primary keeps accepting writes from the clients still connected to it until Sentinel
    # demotes it (on its next 10 s INFO round); a client that notices drops those connections itself.
    sentinel_check_ms: int = 200
    gms_url: str | None = None
    gms_chat_service: str = "customer-support"
    # PUSH_TOKEN, API_TOKEN and DEVICE_TOKEN_SECRET take a comma-separated list, so a secret rotates
    # without downtime: every entry is accepted, the first signs new device tokens. None: unset.
    push_token: tuple[str, ...] | None = None
    api_token: tuple[str, ...] | None = None
    # The ingress refuses to start without PUSH_TOKEN (ingress/server.py) unless this says so on purpose.
    allow_open_push: bool = False
    # Origins (scheme://host[:port], or `*`) whose pages may call the browser-facing endpoints.
    cors_origins: tuple[str, ...] = ()
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    push_max_bytes: int = 65536
    # POST /chats (GMS Request Chat with push built in) and the demo page. GCTI_GMS_NodeGroup is sent
    # when set (GMS < 8.5.213.03 needs it). Without CHAT_START_TOKEN, POST /chats is public like GMS's
    # own Request Chat, and each client address gets a token bucket: CHAT_START_BURST chats at once,
    # refilled at CHAT_START_RATE_PER_MIN. CHAT_API_TIMEOUT_MS bounds each whole Chat API call the
    # ingress makes (Request Chat, Send, typing, Disconnect); DEMO=true serves /demo.
    gms_node_group: str | None = None
    chat_start_token: str | None = None
    chat_start_burst: int = 5
    chat_start_rate_per_min: int = 10
    chat_api_timeout_ms: int = 5000
    demo: bool = False
    log_level: str = "INFO"
    # How long a chat's credentials (userId, secureKey) live without activity. They are secrets, so
    # they go first; 26 h outlives Chat Server's flex-push-timeout of the Genesys guide (86400 s).
    session_idle_ttl_s: int = 26 * 3600
    # How long the rest of a chat's state lives without activity: cursor, alias, device mapping and the
    # ended marker. It must outlive the longest quiet period of a chat, or a late trigger would refresh
    # from position 1 and deliver the transcript again (design invariant 8).
    chat_state_ttl_s: int = 8 * DAY_S
    # Single-flight lease on a chat: short against Chat Server's resend delay (>= 1 s), and longer than
    # the work it covers (checked at start-up against the Refresh deadline).
    lease_ttl_ms: int = 1000
    # Deadline of one whole Refresh call (connect, send, one resend on a stale connection, reply).
    refresh_timeout_ms: int = 400
    # Bounded in-worker retries of a failing Refresh (statusCode 1, HTTP 5xx, timeouts): exponential
    # from the base up to the cap, then a slow steady pace while GMS stays down (never given up).
    refresh_retry_max: int = 6
    refresh_retry_base_ms: int = 50
    refresh_retry_cap_ms: int = 2000
    refresh_slow_retry_ms: int = 15000
    # A multi-Chat-Server GMS refuses a stale alias with the same answer (HTTP 400 / statusCode 2) that
    # reports an ended chat. So a refusal only suspects the end: the chat is tried again at once with an
    # alias GMS has not refused yet, else after this long (the trigger that carries the new alias is
    # usually milliseconds behind) or as soon as the next push arrives; after an attempt that failed on
    # our side it waits REFRESH_SLOW_RETRY_MS instead (that Refresh may have reached GMS and changed the
    # alias in the answer we lost; only the chat's next trigger can tell).
    refused_alias_wait_ms: int = 250
    stream_maxlen: int = 10000
    # A device's stream expires this long after its last write.
    stream_ttl_s: int = 7 * DAY_S
    # Webhook fan-out.
    webhook_timeout_ms: int = 5000
    webhook_batch_max: int = 50
    # A fast first tier (chat platforms retry within seconds), then a long tail over ~2 h (gateways).
    # The tier ramps slowly: a chat's deliveries are ordered, so every step a failing delivery waits
    # holds its whole chat back; a sink that is down is handled by the probe, not by this schedule.
    webhook_retry_schedule_s: tuple[float, ...] = (
        0.1, 0.25, 0.5, 1, 1, 2, 2, 4, 8, 15, 30, 60, 300, 900, 1800, 3600,
    )  # fmt: skip
    # Deliveries in flight per sink per worker process.
    webhook_concurrency: int = 8
    # A sink that fails this many deliveries in a row is down: its deliveries wait, and one of them is
    # sent as a probe every WEBHOOK_SINK_PROBE_MS; the first success sends all of them at once.
    webhook_sink_down_after: int = 10
    webhook_sink_probe_ms: int = 1000
    # The longest `Retry-After` honoured (the schedule's own delay applies if it is longer).
    webhook_retry_after_max_s: int = 3600
    # A receiver's reply body is not used; anything bigger than this is not a webhook acknowledgement.
    webhook_reply_max_bytes: int = 64 * 1024
    # How long a dead-lettered delivery stays in RQ's failed registry.
    dead_letter_ttl_s: int = 7 * DAY_S
    # Outboxes, deliveries, in-flight markers and sink health outlive the longest retry schedule.
    webhook_keys_ttl_s: int = 8 * DAY_S
    # Payload mode: how long a gap in transcript indexes may hold later events back.
    payload_gap_wait_ms: int = 2000
    # Chats claimed (and refreshed concurrently: Refresh is I/O bound) per claim by one worker process.
    claim_batch: int = 16
    # A commit call carries at most this many events (Lua's `unpack` fails at a few thousand items,
    # after earlier writes of the script have landed, and one huge call would stall Redis for
    # everybody) and about this many bytes of event JSON; a bigger outcome is committed in chunks.
    commit_chunk_events: int = 500
    commit_chunk_bytes: int = 1 << 20
    # A drain job hands its worker back to RQ after this long (then kicks a successor if work remains);
    # with nothing due it keeps looking DRAIN_LINGER_MS, every DRAIN_POLL_MS, before it ends.
    drain_budget_ms: int = 2000
    drain_linger_ms: int = 150
    drain_poll_ms: int = 5
    # RQ's timeout of a drain job, and how long a failed one stays in RQ's failed registry.
    drain_job_timeout_s: int = 60
    drain_failure_ttl_s: int = DAY_S
    # The marker set while a drain job waits in the queue: its TTL bounds how long a lost drain job (a
    # crash between dequeue and start) can hold new ones back.
    drain_marker_ttl_ms: int = 1000
    # Each worker process looks this often for work falling due with no push to announce it (retries,
    # gap waits, webhook retries, expired leases) and flushes its metrics every METRICS_FLUSH_MS.
    watch_interval_ms: int = 100
    metrics_flush_ms: int = 1000
    # A worker waiting for Redis to come back retries with a backoff up to this.
    redis_retry_cap_ms: int = 5000
    # Device streams (GET /devices/{deviceId}/events) and the device tokens that open them. Without a
    # secret, device streams and token minting answer 404. At least 16 characters: a token is signed
    # with it, and a short key could be brute-forced offline from any token a device holds.
    device_token_secret: tuple[str, ...] | None = None
    device_token_ttl_s: int = DAY_S
    # A `:` comment this often keeps idle streams open through proxies and lets clients see a dead link.
    sse_heartbeat_s: int = 15
    # Open device streams per ingress process (each holds one Redis connection: Redis's maxclients
    # must exceed this times the ingress processes, plus the workers'), and per device per process.
    sse_max_connections: int = 1000
    sse_device_max_connections: int = 4
    # A client that does not take one message (or heartbeat) within this long is disconnected, so a
    # stalled reader frees its connection; it resumes with Last-Event-ID, losing nothing.
    sse_send_timeout_s: int = 30


# Fields whose variable is not simply the upper-cased name, or whose value is not a positive integer.
_STR_FIELDS = (
    "redis_url", "gms_url", "gms_chat_service", "webhook_secret", "redis_sentinel_master",
    "redis_sentinel_password",
)  # fmt: skip
_SECRET_LISTS = ("push_token", "api_token", "device_token_secret")  # comma-separated: rotation
_INT_FIELDS = tuple(name for name, kind in Settings.__annotations__.items() if kind == "int")
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")  # what redis-py's from_url accepts
_ORIGIN = re.compile(r"https?://[^/?#\s]+")  # what a browser sends as Origin: no path
INGRESS_ACKS = ("stored", "replicated", "replicated+fsynced")
# GMS must have its answer within 250 ms (contract), and the ingress bounds each Redis read at 200 ms:
# the replica's confirmation has to arrive well inside that.
REPLICA_ACK_TIMEOUT_MAX_MS = 150
# Variables of earlier versions: refused with a pointer, so an upgrade never silently ignores them.
_RETIRED_VARS = {
    "ENDED_TTL_S": "ended markers now live CHAT_STATE_TTL_S with the rest of a chat's state",
    "DEDUPE_TTL_S": "repeated triggers are never dropped (a repeat may announce new events)",
}
# A lease must cover a whole Refresh twice over (the call, then claim and commit overheads and a
# chunked commit) plus this margin, so that no two workers ever refresh one chat at once.
LEASE_MARGIN_MS = 200
# A device token's HMAC key must resist offline guessing from a token.
DEVICE_TOKEN_SECRET_MIN_CHARS = 16
# Lua's `unpack` fails at a few thousand items: a commit chunk stays well below.
COMMIT_CHUNK_EVENTS_MAX = 1000


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


def _check_redis_url(url: str) -> None:
    """redis-py would otherwise fail at the first command, deep in a traceback, in every process."""
    if url.startswith(_REDIS_SCHEMES):
        return
    # A URL may carry a password: show the value only when it holds no credentials.
    shown = repr(url) if "@" not in url else f"a URL with scheme {url.partition(':')[0]!r}"
    raise ConfigError(f"REDIS_URL must start with {', '.join(_REDIS_SCHEMES)}; got {shown}")


def _parse_sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (an IPv6 host in brackets: `[::1]:26379`), each named once."""
    found: list[tuple[str, int]] = []
    for number, part in enumerate((p.strip() for p in raw.split(",")), start=1):
        if not part:
            raise ConfigError(f"REDIS_SENTINELS: entry {number} is empty (expected host:port,host:port)")
        if part.startswith("["):
            host, closed, rest = part[1:].partition("]")
            sep, port = rest[:1], rest[1:]
            ok = bool(closed) and sep == ":"
        else:
            host, sep, port = part.partition(":")
            ok = sep == ":"
        if not ok or not host:
            raise ConfigError(
                f"REDIS_SENTINELS entries are host:port (Sentinel's own port is usually 26379), got {part!r}"
            )
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"REDIS_SENTINELS: {part!r} has no valid port (1-65535)")
        if (host, int(port)) in found:
            raise ConfigError(f"REDIS_SENTINELS names {part!r} twice")
        found.append((host, int(port)))
    return tuple(found)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build settings from an environment mapping; a bad value fails naming its variable."""
    values: dict[str, object] = {}
    for var, why in _RETIRED_VARS.items():
        if environ.get(var, "").strip():
            raise ConfigError(f"{var} is no longer used ({why}); remove it")
    for field in (*_STR_FIELDS, "log_level"):
        raw = environ.get(field.upper(), "").strip()
        if raw:
            values[field] = raw
    for field in _INT_FIELDS:
        raw = environ.get(field.upper(), "").strip()
        if raw:
            values[field] = _parse_int(field.upper(), raw)
    if "redis_url" in values:
        _check_redis_url(str(values["redis_url"]))
    sentinels = environ.get("REDIS_SENTINELS", "").strip()
    if sentinels:
        values["redis_sentinels"] = _parse_sentinels(sentinels)
        if str(values.get("redis_url", "")).startswith("unix://"):
            raise ConfigError(
                "REDIS_URL is a unix:// socket but REDIS_SENTINELS is set: Sentinel names the primary by "
                "host and port; use redis://[:password@]host/db (its host is then unused)"
            )
    ack = environ.get("INGRESS_ACK", "").strip().lower()
    if ack:
        if ack not in INGRESS_ACKS:
            raise ConfigError(f"INGRESS_ACK must be one of {', '.join(INGRESS_ACKS)}; got {ack!r}")
        values["ingress_ack"] = ack
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
    values.update(_chat_start_values(environ))
    level = str(values.get("log_level", "INFO")).upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {sorted(_LOG_LEVELS)}, got {level!r}")
    values["log_level"] = level
    secret = values.get("webhook_secret")
    if isinstance(secret, str):
        from shared.signing import decode_secret

        decode_secret(secret)  # fail at start-up, not at the first delivery
    values.update(_security_values(environ))
    settings = Settings(**values)  # type: ignore[arg-type]
    _check_relations(settings)
    return settings


def _security_values(environ: Mapping[str, str]) -> dict[str, object]:
    """The secret lists, ALLOW_OPEN_PUSH and CORS_ORIGINS. A refused secret is never shown."""
    values: dict[str, object] = {}
    for field in _SECRET_LISTS:
        raw = environ.get(field.upper(), "").strip()
        if raw:
            entries = tuple(part.strip() for part in raw.split(","))
            if not all(entries):  # a stray comma: an empty entry would never match, say so
                raise ConfigError(f"{field.upper()}: entry {entries.index('') + 1} of the list is empty")
            values[field] = entries
    device_secrets = values.get("device_token_secret", ())
    for number, secret in enumerate(device_secrets if isinstance(device_secrets, tuple) else (), start=1):
        if len(secret) < DEVICE_TOKEN_SECRET_MIN_CHARS:
            raise ConfigError(
                f"DEVICE_TOKEN_SECRET must be at least {DEVICE_TOKEN_SECRET_MIN_CHARS} characters "
                f"(entry {number} has {len(secret)}): device tokens are signed with it"
            )
    allow = environ.get("ALLOW_OPEN_PUSH", "").strip().lower()
    if allow:
        if allow not in ("true", "false"):
            raise ConfigError(f"ALLOW_OPEN_PUSH must be true or false, got {allow!r}")
        values["allow_open_push"] = allow == "true"
    origins = tuple(o.strip() for o in environ.get("CORS_ORIGINS", "").split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"CORS_ORIGINS entries are origins such as https://app.example.com (scheme, host, "
                f"optional port; no path or trailing slash) or *, got {origin!r}"
            )
    values["cors_origins"] = origins
    return values


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
    if settings.commit_chunk_events > COMMIT_CHUNK_EVENTS_MAX:
        raise ConfigError(
            f"COMMIT_CHUNK_EVENTS ({settings.commit_chunk_events}) must not exceed "
            f"{COMMIT_CHUNK_EVENTS_MAX}: Lua's unpack fails mid-script on a few thousand items"
        )
    if settings.drain_budget_ms >= settings.drain_job_timeout_s * 1000:
        raise ConfigError(
            f"DRAIN_BUDGET_MS ({settings.drain_budget_ms}) must be below DRAIN_JOB_TIMEOUT_S "
            f"({settings.drain_job_timeout_s}) in ms: RQ would kill a drain that is still working"
        )
    if settings.replica_ack_timeout_ms > REPLICA_ACK_TIMEOUT_MAX_MS:
        raise ConfigError(
            f"REPLICA_ACK_TIMEOUT_MS ({settings.replica_ack_timeout_ms}) must not exceed "
            f"{REPLICA_ACK_TIMEOUT_MAX_MS}: GMS waits for each answer, and the ingress answers within 250 ms"
        )
    if settings.webhook_keys_ttl_s < sum(settings.webhook_retry_schedule_s) * 1.2 + 60:
        raise ConfigError(
            f"WEBHOOK_KEYS_TTL_S ({settings.webhook_keys_ttl_s}) must outlive the whole "
            "WEBHOOK_RETRY_SCHEDULE_S (with its 20% jitter): a delivery would expire while retried"
        )


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise ConfigError(f"{name} must be true or false, got {raw.strip()!r}")
    return value == "true"


def _chat_start_values(environ: Mapping[str, str]) -> dict[str, object]:
    """GMS_NODE_GROUP, CHAT_START_TOKEN (strings) and DEMO (a boolean); the integers are read with
    every other integer."""
    values: dict[str, object] = {}
    for field in ("gms_node_group", "chat_start_token"):
        raw = environ.get(field.upper(), "").strip()
        if raw:
            values[field] = raw
    demo = environ.get("DEMO", "").strip()
    if demo:
        values["demo"] = _parse_bool("DEMO", demo)
    return values
