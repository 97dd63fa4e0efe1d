"""Ids unique across processes without a round trip to Redis (RQ job ids, webhook deliveries, leases)."""

from __future__ import annotations

import itertools
import secrets


class IdSource:
    """`<kind>-<128 random bits of this process>-<counter>`.

    Random bits, not the pid: in containers every process is pid 1. A collision would hand one chat's
    webhook body to another's delivery id, or one drain job's hash to another."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(16)
        self._counter = itertools.count()

    def new(self, kind: str) -> str:
        return f"{kind}-{self._prefix}-{next(self._counter)}"
