"""Webhook sink: send each chat's deliveries in order, many chats and sinks in parallel.

A delivery's body and id are fixed when it is created (in Lua), so retries, an operator's requeue and
rq-dashboard's requeue all send the same bytes under the same `webhook-id`. Each sink has its own
bounded thread pool per worker process, so a slow or dead endpoint only ever occupies its own slots.
Retries follow WEBHOOK_RETRY_SCHEDULE_S with +-20% jitter (longer if the endpoint asks with
`Retry-After` on 429/503); after the last one the delivery becomes a failed RQ job (the dead-letter
registry: workers/dead_letters.py), and the chat's later deliveries wait behind it. A sink failing
several deliveries in a row is down: its deliveries wait and one probe a second tests it
(take_deliveries.lua); 410 Gone disables it. Each request has a deadline for the whole exchange
(WEBHOOK_TIMEOUT_MS), shorter than its lease, so no delivery is ever in flight twice.
"""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import redis

from shared.clock import now_ms
from shared.ids import IdSource
from shared.scripts import Scripts
from shared.settings import Settings
from workers.dead_letters import dead_letter
from workers.webhook_send import Delivery, Failure, Sinks

log = logging.getLogger("gms_relay.webhooks")

# A taken delivery is ours until its request surely ended: its whole-request deadline plus this margin
# for signing, the Redis calls around it and a stalled thread.
LEASE_MARGIN_MS = 5000


class WebhookDispatcher:
    """Takes due deliveries for the sinks that have room in this process and sends them."""

    def __init__(
        self, client: redis.Redis, scripts: Scripts, ids: IdSource, settings: Settings, sinks: Sinks
    ):
        self.redis = client
        self.scripts = scripts
        self.ids = ids
        self.settings = settings
        self.sinks = sinks
        self.concurrency = settings.webhook_concurrency
        self.pools = [
            ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"webhook-{s}")
            for s in range(len(sinks))
        ]
        self.busy = [0] * len(sinks)
        self.lock = threading.Lock()
        self.lease_ms = settings.webhook_timeout_ms + LEASE_MARGIN_MS

    def pump(self) -> int:
        """Start every due delivery there is room for; returns how many were started.

        Called from the drain thread and the watcher at once: the room is reserved under the lock before
        the claim, so together they never take more than the pools can run."""
        if not self.pools:
            return 0
        with self.lock:
            room = [self.concurrency - busy for busy in self.busy]
            for sink, free in enumerate(room):
                self.busy[sink] += free
        taken = [0] * len(room)
        try:
            if any(room):
                token = self.ids.new("lease")
                rows = self.scripts["take_deliveries"](
                    room, now_ms=now_ms(), lease_ms=self.lease_ms, token=token
                )
                for row in rows:
                    delivery = Delivery(
                        row[0].decode(), int(row[1]), row[2].decode(), row[3], int(row[4] or 0)
                    )
                    taken[delivery.sink] += 1
                    self.pools[delivery.sink].submit(self._run, delivery, token)
        finally:
            with self.lock:
                for sink, free in enumerate(room):
                    self.busy[sink] -= free - taken[sink]  # give back what was reserved but not taken
        return sum(taken)

    def finish(self, delivery_id: str) -> bool:
        """Drop a delivered (or skipped) delivery and start its chat's next one; True if one started."""
        return bool(
            self.scripts["delivery_done"](id=delivery_id, next_id=self.ids.new("wh"), now_ms=now_ms())
        )

    def close(self) -> None:
        """Let in-flight deliveries finish."""
        for pool in self.pools:
            pool.shutdown(wait=True)
        self.sinks.close()

    def _run(self, delivery: Delivery, token: str) -> None:
        try:
            failure = self.sinks.send(delivery)
            if failure is None:
                started_next = self.finish(delivery.id)
            else:
                self._failed(delivery, token, failure)
                started_next = False
        except Exception:
            log.exception("webhook delivery crashed", extra={"delivery_id": delivery.id})
            started_next = False
        finally:
            with self.lock:
                self.busy[delivery.sink] -= 1
        if started_next:
            self.pump()

    def _failed(self, delivery: Delivery, token: str, failure: Failure) -> None:
        schedule = self.settings.webhook_retry_schedule_s
        attempt = delivery.attempts + 1
        extra = {
            "delivery_id": delivery.id,
            "session_id": delivery.session_id,
            "sink": delivery.sink,
            "attempt": attempt,
            "reason": failure.reason,
        }
        retry_at = None
        if attempt <= len(schedule):
            delay_s = schedule[attempt - 1] * random.uniform(0.8, 1.2)
            if failure.retry_after_s is not None:
                delay_s = max(delay_s, min(failure.retry_after_s, self.settings.webhook_retry_after_max_s))
            retry_at = now_ms() + int(delay_s * 1000)
        # Fenced first: a worker that lost its lease must not leave a dead letter behind.
        outcome = self.scripts["delivery_failed"](
            id=delivery.id, token=token, now_ms=now_ms(), retry_at_ms=retry_at, gone=failure.gone
        )
        outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        if outcome in ("dead", "gone"):
            dead_letter(self.redis, self.settings, delivery, failure.reason)
            if outcome == "gone":
                log.error(
                    "webhook endpoint answered 410 Gone: sink disabled, delivery dead-lettered", extra=extra
                )
            else:
                log.error("webhook delivery dead-lettered", extra=extra)
        elif outcome == "parked":
            log.warning("webhook sink is down; the delivery waits for its probe", extra=extra)
        elif outcome == "retry":
            log.warning("webhook delivery failed; will retry", extra=extra)
