"""The text every Lua script starts with: per-process constants, key names and the RQ job template.

Redis gets each script whole, so what the Python side knows is rendered into Lua here, once per
process: the settings a script uses (`CFG_<NAME>`), every key name of shared/keys.py (as constants and
as functions: `keys.session(sid)`), and the drain job exactly as RQ's own `Job.to_dict` writes it, so a
plain `rq worker` runs the jobs the scripts enqueue and rq-dashboard shows them.
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from shared import keys
from shared.settings import Settings

# Members of RQ's job hash that each enqueue writes itself.
_PER_JOB_FIELDS = {"created_at", "enqueued_at", "data", "status", "origin"}
# Job.create wants a client; building a template never sends a command.
_OFFLINE = Redis()
# Placeholders for a key function's arguments (characters no key name contains).
_HOLES = ("\x01", "\x02")


def lua_string(value: str | bytes) -> str:
    """A Lua string literal of any bytes."""
    raw = value.encode() if isinstance(value, str) else value
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b}" for b in raw) + '"'


def _lua_table(fields: dict[str, Any]) -> str:
    pairs = [f"{lua_string(str(k))}, {lua_string(str(v))}" for k, v in fields.items()]
    return "{" + ", ".join(pairs) + "}"


def _key_function(name: str) -> str:
    """`name = function(a, b) return "prefix" .. a .. ":" .. b end`, from calling keys.<name> with
    placeholders: the Lua helper cannot drift from the Python one."""
    function = getattr(keys, name)
    arity = function.__code__.co_argcount
    text = function(*_HOLES[:arity])
    params = ["a", "b"][:arity]
    parts: list[str] = []
    for hole, param in zip(_HOLES[:arity], params, strict=True):
        before, _, text = text.partition(hole)
        if before:
            parts.append(lua_string(before))
        parts.append(param)
    if text:
        parts.append(lua_string(text))
    return f"{name} = function({', '.join(params)}) return {' .. '.join(parts)} end"


def constants(settings: Settings) -> dict[str, int]:
    """Per-process constants baked into every script (CFG_<NAME> in Lua), so calls carry only what
    changes per call."""
    return {
        "SINKS": len(settings.webhook_urls),
        "BATCH_MAX": settings.webhook_batch_max,
        "STREAM_MAXLEN": settings.stream_maxlen,
        "STREAM_TTL_MS": settings.stream_ttl_s * 1000,
        "OUTBOX_TTL_MS": settings.webhook_keys_ttl_s * 1000,
        "CREDS_TTL_MS": settings.session_idle_ttl_s * 1000,
        "STATE_TTL_MS": settings.chat_state_ttl_s * 1000,
        "LEASE_TTL_MS": settings.lease_ttl_ms,
        "DRAIN_MARKER_TTL_MS": settings.drain_marker_ttl_ms,
        "COMMIT_CHUNK_EVENTS": settings.commit_chunk_events,
        "SINK_DOWN_AFTER": settings.webhook_sink_down_after,
        "SINK_PROBE_MS": settings.webhook_sink_probe_ms,
    }


def _drain_template(settings: Settings) -> dict[str, Any]:
    drain = Job.create(
        keys.DRAIN_JOB,
        serializer=JSONSerializer,
        timeout=settings.drain_job_timeout_s,
        result_ttl=0,
        failure_ttl=settings.drain_failure_ttl_s,
        description="drain: refresh and deliver every dirty chat",
        id="template",
        connection=_OFFLINE,
    )
    return {k: v for k, v in drain.to_dict().items() if k not in _PER_JOB_FIELDS and v != ""}


def prelude(settings: Settings) -> str:
    drain_data = json.dumps([keys.DRAIN_JOB, None, [], {}], separators=(",", ":"))
    return "\n".join(
        [
            "-- Rendered by shared/lua_prelude.py from the settings and shared/keys.py.",
            *(f"local CFG_{name} = {value}" for name, value in constants(settings).items()),
            *(f"local {name} = {lua_string(getattr(keys, name))}" for name in keys.LUA_CONSTANTS),
            f"local SINK_PARKED = {keys.SINK_PARKED}",
            "local keys = {",
            *(f"  {_key_function(name)}," for name in keys.LUA_FUNCTIONS),
            "}",
            f"local DRAIN_QUEUE_NAME = {lua_string(keys.DRAIN_QUEUE)}",
            f"local function drain_template() return {_lua_table(_drain_template(settings))} end",
            f"local DRAIN_DATA = {lua_string(drain_data)}",
        ]
    )
