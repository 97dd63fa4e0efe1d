"""The whole Redis layout of the relay, in one place, so an operator can read it at a glance.

The Lua scripts get their key names from here too: shared/lua_prelude.py renders every constant and key
function below into the prelude of each script (`keys.session(sid)` in Lua as in Python).

Per-chat keys carry the session id in braces-free form; every key either has a TTL or is
removed when its chat ends. Two lifetimes: a chat's credentials live SESSION_IDLE_TTL_S without
activity (they are secrets), everything else about the chat CHAT_STATE_TTL_S (the cursor must outlive
the chat's longest quiet period, or a late trigger would deliver the transcript again).
"""

from __future__ import annotations

PREFIX = "gms-relay"

# RQ queues. The drain queue carries "refresh and deliver whatever is due" jobs. The webhook queue
# holds dead-lettered deliveries requeued by an operator (from RQ's failed registry or rq-dashboard).
DRAIN_QUEUE = "gms-relay"
WEBHOOK_QUEUE = "gms-relay-webhooks"
QUEUES = (DRAIN_QUEUE, WEBHOOK_QUEUE)
DRAIN_JOB = "workers.jobs.drain"
WEBHOOK_JOB = "workers.jobs.deliver_webhook"

# Sorted set of chats that need work: member = session id, score = earliest ms at which a worker
# may take it (the arrival time of the oldest unserved trigger, or the end of a retry backoff).
DIRTY = f"{PREFIX}:dirty"
# Marker set while a drain job sits in the queue, so a burst of pushes enqueues one job. TTL
# DRAIN_MARKER_TTL_MS: it bounds how long a lost drain job can hold new ones back.
DRAIN_QUEUED = f"{PREFIX}:drain-queued"
# List of wake-ups for devices without a known chat, waiting to be emitted.
WAKEUPS = f"{PREFIX}:wakeups"
# Hash of counters shared by every process (see shared/metrics.py).
COUNTERS = f"{PREFIX}:counters"
# Sorted set of chats parked for want of credentials: member = session id, score = ms parked. A chat
# emits `chat.credentials_required` when it enters; registering, ending or forgetting it takes it out.
PARKED = f"{PREFIX}:parked"


def session(session_id: str) -> str:
    """Hash of a chat's state: deviceId, service, cursor, alias, alias_key, aliases, refused, gen, end,
    retries, mode, gap_since, gaps, skipped. TTL CHAT_STATE_TTL_S, renewed by every push and commit."""
    return f"{PREFIX}:session:{session_id}"


def credentials(session_id: str) -> str:
    """Hash: userId, secureKey (the REST credentials). TTL SESSION_IDLE_TTL_S; deleted at chat end."""
    return f"{PREFIX}:creds:{session_id}"


def device(device_id: str) -> str:
    """String: the session id a device is currently chatting in. TTL CHAT_STATE_TTL_S."""
    return f"{PREFIX}:device:{device_id}"


def lease(session_id: str) -> str:
    """String: token of the worker refreshing this chat. Short PX TTL (the single-flight lease)."""
    return f"{PREFIX}:lease:{session_id}"


def staged(session_id: str) -> str:
    """Hash: transcript index -> event JSON from payload-mode pushes, released in index order."""
    return f"{PREFIX}:staged:{session_id}"


def ended(session_id: str) -> str:
    """String: why a chat ended; makes `chat.ended` once-only and late pushes no-ops.
    TTL CHAT_STATE_TTL_S."""
    return f"{PREFIX}:ended:{session_id}"


def stream(device_id: str) -> str:
    """Stream sink of the contract: one entry per event, capped by length."""
    return f"{PREFIX}:events:{device_id}"


def outbox(sink: int, session_id: str) -> str:
    """List: events waiting for webhook sink `sink` for one chat, in index order. TTL
    WEBHOOK_KEYS_TTL_S, as every webhook key."""
    return f"{PREFIX}:outbox:{sink}:{session_id}"


def inflight(sink: int, session_id: str) -> str:
    """String: id of the webhook delivery job at the head of a chat's outbox for one sink."""
    return f"{PREFIX}:inflight:{sink}:{session_id}"


def delivery(delivery_id: str) -> str:
    """Hash: body (fixed JSON, so every retry sends the same bytes), sink, sid, attempts, token, dead."""
    return f"{PREFIX}:delivery:{delivery_id}"


# Sorted set of webhook deliveries by due time (ms); a taken delivery's score is its lease end, and a
# delivery waiting on a sink that is down or disabled scores SINK_PARKED + sink.
DELIVERIES = f"{PREFIX}:deliveries"
SINK_PARKED = 10**13  # 1e13 ms (year 2286): beyond any due time, exact in Lua's number format


def sink(index: int) -> str:
    """Hash of a webhook sink's health: fails (in a row), down / probe_at (ms), disabled (410 Gone, ms)."""
    return f"{PREFIX}:sink:{index}"


def rq_queue(name: str) -> str:
    """RQ's list of a queue's job ids (RQ's own layout: the relay writes jobs as RQ does)."""
    return f"rq:queue:{name}"


def rq_job(job_id: str) -> str:
    """RQ's hash of one job."""
    return f"rq:job:{job_id}"


RQ_QUEUES = "rq:queues"

# What the Lua prelude renders: these constants, and these functions (each argument spliced in).
LUA_CONSTANTS = ("DIRTY", "DRAIN_QUEUED", "WAKEUPS", "COUNTERS", "PARKED", "DELIVERIES", "RQ_QUEUES")
LUA_FUNCTIONS = (
    "session", "credentials", "device", "lease", "staged", "ended", "stream", "outbox", "inflight",
    "delivery", "sink", "rq_queue", "rq_job",
)  # fmt: skip
