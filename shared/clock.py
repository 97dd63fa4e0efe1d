"""The relay's one clock: unix milliseconds, the unit of every score and timestamp kept in Redis."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock milliseconds: shared by every process (and compared in Lua), so not monotonic."""
    return time.time_ns() // 1_000_000
