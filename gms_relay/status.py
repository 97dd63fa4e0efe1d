"""The one-line status `gms-relay up` prints every few seconds: pushes in, events out, backlog, dead
letters. The operator watching a terminal sees at a glance whether work flows and whether it piles up,
without scrolling through the children's logs (they are in files) or scraping /metrics by hand."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from shared import keys
from shared.redis_clients import no_retry, sync_client
from shared.settings import Settings

# The statuses of a 200 reply to POST /push (README, HTTP API); every other outcome of the ingress's
# gms_relay_pushes_total is an error code, i.e. a push that was refused and stored nowhere.
ACCEPTED_OUTCOMES = frozenset({"queued", "duplicate", "late", "covered", "ended", "wakeup"})
_TIMEOUT_S = 0.5  # the supervisor's loop waits on these reads; a stuck Redis must not stall Ctrl-C


@dataclass(frozen=True)
class Status:
    pushes: int | None  # answered 200 by the ingress; None while its /metrics does not answer
    refused: int | None  # answered with an error (nothing stored)
    events: int  # transcript events written to the sinks
    dirty: int  # chats with work pending (due, in a Refresh, or waiting for a retry)
    queued: int  # RQ jobs waiting in the relay's queues
    dead: int  # jobs in the relay's failed registries: webhook dead letters (and failed drains)


def _pushes(client: httpx.Client, metrics_url: str) -> tuple[int | None, int | None]:
    """The pushes are counted by the ingress process only (Redis holds no per-push counter)."""
    try:
        text = client.get(metrics_url).text
    except httpx.HTTPError:
        return None, None
    accepted = refused = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gms_relay_pushes_total":
                if sample.labels.get("outcome") in ACCEPTED_OUTCOMES:
                    accepted += int(sample.value)
                else:
                    refused += int(sample.value)
    return accepted, refused


class StatusReader:
    """Reads the figures from Redis (shared by every worker) and the ingress's /metrics."""

    def __init__(self, settings: Settings, metrics_url: str) -> None:
        # One attempt per line: the next line, a few seconds later, is the retry (also to a new primary).
        self._redis = sync_client(
            settings, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S, retry=no_retry()
        )
        self._http = httpx.Client(timeout=_TIMEOUT_S)
        self._metrics_url = metrics_url
        self._previous: Status | None = None

    def read(self) -> Status:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(keys.COUNTERS, "events_delivered")
        pipe.zcard(keys.DIRTY)
        for queue in keys.QUEUES:
            pipe.llen(keys.rq_queue(queue))
            pipe.zcard(f"rq:failed:{queue}")  # RQ's FailedJobRegistry key, as ingress/app.py reads it
        events, dirty, *per_queue = pipe.execute()
        pushes, refused = _pushes(self._http, self._metrics_url)
        return Status(
            pushes=pushes,
            refused=refused,
            events=int(events or 0),
            dirty=int(dirty),
            queued=sum(int(n) for n in per_queue[0::2]),
            dead=sum(int(n) for n in per_queue[1::2]),
        )

    def line(self) -> str:
        """The next status line, with what changed since the previous one."""
        try:
            status = self.read()
        except (redis.RedisError, OSError) as exc:
            return f"gms-relay: {time.strftime('%H:%M:%S')} Redis is not answering ({type(exc).__name__})"
        line = format_status(status, self._previous)
        self._previous = status
        return line

    def close(self) -> None:
        self._redis.close()
        self._http.close()


def _delta(now: int | None, before: int | None) -> str:
    return f" (+{now - before})" if now is not None and before is not None else ""


def format_status(status: Status, previous: Status | None = None) -> str:
    """One line; the figures in brackets are what changed since `previous` (none on the first line)."""
    pushes = "?" if status.pushes is None else str(status.pushes)
    pushes_before = previous.pushes if previous else None
    refused = f", {status.refused} refused" if status.refused else ""
    return (
        f"gms-relay: {time.strftime('%H:%M:%S')} pushes {pushes}{_delta(status.pushes, pushes_before)}"
        f"{refused} | events delivered {status.events}"
        f"{_delta(status.events, previous.events if previous else None)}"
        f" | backlog {status.dirty} dirty chats, {status.queued} queued jobs"
        f" | dead letters {status.dead}"
    )
