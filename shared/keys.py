"""The whole Redis layout of the relay, in one place, so an operator can read it at a glance.

Per-chat keys carry the session id in braces-free form; every key either has a TTL or is
removed when its chat ends.
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
# Marker set while a drain job sits in the queue, so a burst of pushes enqueues one job.
DRAIN_QUEUED = f"{PREFIX}:drain-queued"
# List of wake-ups for devices without a known chat, waiting to be emitted.
WAKEUPS = f"{PREFIX}:wakeups"
# Hash of counters shared by every process (see shared/metrics.py).
COUNTERS = f"{PREFIX}:counters"


def session(session_id: str) -> str:
    """Hash: deviceId, userId, secureKey, alias, service, cursor, end, retries. Idle TTL."""
    return f"{PREFIX}:session:{session_id}"


def device(device_id: str) -> str:
    """String: the session id a device is currently chatting in. Idle TTL."""
    return f"{PREFIX}:device:{device_id}"


def lease(session_id: str) -> str:
    """String: token of the worker refreshing this chat. Short PX TTL (the single-flight lease)."""
    return f"{PREFIX}:lease:{session_id}"


def staged(session_id: str) -> str:
    """Hash: transcript index -> event JSON from payload-mode pushes, released in index order."""
    return f"{PREFIX}:staged:{session_id}"


def ended(session_id: str) -> str:
    """String: why a chat ended; makes `chat.ended` once-only and late pushes no-ops. TTL."""
    return f"{PREFIX}:ended:{session_id}"


def dedupe_prefix() -> str:
    """Prefix of exact-duplicate markers `{prefix}{session}:{position}:{attempt}` (TTL)."""
    return f"{PREFIX}:dup:"


def stream(device_id: str) -> str:
    """Stream sink of the contract: one entry per event, capped by length."""
    return f"{PREFIX}:events:{device_id}"


def outbox(sink: int, session_id: str) -> str:
    """List: events waiting for webhook sink `sink` for one chat, in index order."""
    return f"{PREFIX}:outbox:{sink}:{session_id}"


def inflight(sink: int, session_id: str) -> str:
    """String: id of the webhook delivery job at the head of a chat's outbox for one sink."""
    return f"{PREFIX}:inflight:{sink}:{session_id}"


def delivery(delivery_id: str) -> str:
    """Hash: body (fixed JSON, so every retry sends the same bytes), sink, sid, attempts, token, dead."""
    return f"{PREFIX}:delivery:{delivery_id}"


# Sorted set of webhook deliveries by due time (ms); a taken delivery's score is its lease end.
DELIVERIES = f"{PREFIX}:deliveries"


def rq_queue(name: str) -> str:
    return f"rq:queue:{name}"


RQ_QUEUES = "rq:queues"
