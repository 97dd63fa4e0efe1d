"""Per-address token buckets for `POST /chats`, which is public like GMS's own Request Chat.

Each chat started costs GMS a session and a contact centre an agent's attention, so one client address
may start `capacity` chats at once and then `per_minute` a minute. In-process and per ingress process:
a bucket needs no Redis round trip, and N processes allow N times the rate, which is what bounds a
single address anyway. Memory is bounded: under a spray of addresses, full buckets (those that have
refilled, carrying no information) are forgotten first, then all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBuckets:
    def __init__(
        self,
        capacity: int,
        per_minute: int,
        *,
        max_tracked: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = float(capacity)
        self.per_s = per_minute / 60.0
        self.max_tracked = max_tracked
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def take(self, address: str) -> float:
        """Take one token: 0.0 if the request may go ahead, else the seconds until a token is back."""
        now = self.clock()
        tokens = self._level(address, now)
        if tokens >= 1.0:
            if address not in self._buckets and len(self._buckets) >= self.max_tracked:
                self._prune(now)
            self._buckets[address] = (tokens - 1.0, now)
            return 0.0
        self._buckets[address] = (tokens, now)
        return (1.0 - tokens) / self.per_s

    def _level(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.per_s)

    def _prune(self, now: float) -> None:
        for address in [a for a in self._buckets if self._level(a, now) >= self.capacity]:
            del self._buckets[address]
        if len(self._buckets) >= self.max_tracked:
            self._buckets.clear()
