"""The relay's Lua scripts, with RQ job templates baked in, registered on a Redis client.

Every state change of the pipeline is one Lua call, so each is atomic and costs one round trip.
Jobs are written in exactly the form RQ's `Queue.enqueue` writes them (the template comes from RQ's
own `Job.to_dict`), so a plain `rq worker` runs them and rq-dashboard shows them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from shared import keys
from shared.settings import Settings

# Each script and the helper files it needs (Redis runs the whole text on every call).
SCRIPT_PARTS = {
    "ingest": ("core",),
    "register": ("core",),
    "forget": ("core",),
    "kick": ("core",),
    "release": ("core", "fanout"),
    "claim": ("core", "fanout"),
    "commit": ("core", "fanout"),
    "take_deliveries": ("core", "fanout"),
    "delivery_done": ("core", "fanout"),
    "delivery_failed": ("core", "fanout"),
}
# Members of RQ's job hash that each enqueue writes itself.
_PER_JOB_FIELDS = {"created_at", "enqueued_at", "data", "status", "origin"}
DRAIN_TIMEOUT_S = 60
# Most events one commit call may carry: Lua's `unpack` fails at a few thousand items (after earlier
# writes of the script have landed), and one huge call would stall Redis for everybody. Bigger
# outcomes are committed in chunks (workers/commit.py); the script refuses more before any write.
COMMIT_CHUNK_EVENTS = 500
# A webhook sink that fails this many deliveries in a row is down: its deliveries wait, and one of them
# is sent as a probe every SINK_PROBE_MS; the first success sends all of them at once.
SINK_DOWN_AFTER = 10
SINK_PROBE_MS = 1000
DRAIN_FAILURE_TTL_S = 24 * 3600
# Job.create wants a client; building a template never sends a command.
_OFFLINE = Redis()


def _lua_string(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b}" for b in raw) + '"'


def _lua_table(fields: dict[str, Any]) -> str:
    pairs = [f"{_lua_string(str(k))}, {_lua_string(str(v))}" for k, v in fields.items()]
    return "{" + ", ".join(pairs) + "}"


def _template(job: Job) -> dict[str, Any]:
    return {k: v for k, v in job.to_dict().items() if k not in _PER_JOB_FIELDS and v != ""}


def _constants(settings: Settings) -> dict[str, int]:
    """Per-process constants baked into every script (CFG_<NAME> in Lua), so calls carry only what
    changes per call."""
    return {
        "SINKS": len(settings.webhook_urls),
        "BATCH_MAX": settings.webhook_batch_max,
        "STREAM_MAXLEN": settings.stream_maxlen,
        "STREAM_TTL_MS": settings.stream_ttl_s * 1000,
        "OUTBOX_TTL_MS": keys.WEBHOOK_KEYS_TTL_MS,
        "CREDS_TTL_MS": settings.session_idle_ttl_s * 1000,
        "STATE_TTL_MS": settings.chat_state_ttl_s * 1000,
        "LEASE_TTL_MS": settings.lease_ttl_ms,
        "DRAIN_MARKER_TTL_MS": keys.DRAIN_MARKER_TTL_MS,
        "COMMIT_CHUNK_EVENTS": COMMIT_CHUNK_EVENTS,
        "SINK_DOWN_AFTER": SINK_DOWN_AFTER,
        "SINK_PROBE_MS": SINK_PROBE_MS,
    }


def _prelude(settings: Settings) -> str:
    drain = Job.create(
        keys.DRAIN_JOB,
        serializer=JSONSerializer,
        timeout=DRAIN_TIMEOUT_S,
        result_ttl=0,
        failure_ttl=DRAIN_FAILURE_TTL_S,
        description="drain: refresh and deliver every dirty chat",
        id="template",
        connection=_OFFLINE,
    )
    drain_data = json.dumps([keys.DRAIN_JOB, None, [], {}], separators=(",", ":"))
    return "\n".join(
        [
            *(f"local CFG_{name} = {value}" for name, value in _constants(settings).items()),
            f"local DRAIN_QUEUE_NAME = {_lua_string(keys.DRAIN_QUEUE)}",
            f"local function drain_template() return {_lua_table(_template(drain))} end",
            f"local DRAIN_DATA = {_lua_string(drain_data)}",
        ]
    )


def _read(name: str) -> str:
    return resources.files("shared").joinpath("lua", f"{name}.lua").read_text()


@dataclass(frozen=True)
class ScriptSources:
    """Full Lua source of each script: templates + common helpers + the script body."""

    sources: dict[str, str]

    @classmethod
    def build(cls, settings: Settings) -> ScriptSources:
        prelude = _prelude(settings)
        return cls(
            {
                name: "\n".join([prelude, *(_read(part) for part in parts), _read(name)])
                for name, parts in SCRIPT_PARTS.items()
            }
        )

    def register(self, client: Any) -> dict[str, Any]:
        """Script objects for a sync or asyncio redis client (they reload themselves on NOSCRIPT)."""
        return {name: client.register_script(source) for name, source in self.sources.items()}
