"""The workload benchmarks/pipeline.py offers: chats, rate, Chat Server's resends and the protocol noise."""

from __future__ import annotations

import random
from dataclasses import dataclass

from simulator.chat_api import Faults

MARKER_TTL_S = 5  # CHAT_STATE_TTL_S (ended markers) of the memory check in benchmarks/sweep.py


@dataclass(frozen=True)
class Workload:
    rate: float = 500.0  # offered events (= fresh triggers) per second over all chats
    duration_s: float = 20.0  # sending time, warm-up included
    warmup_s: float = 3.0  # excluded from every measurement
    chats: int = 200  # concurrent chats
    events_per_chat: int = 40  # agent/customer events per chat before it ends
    senders: int = 4  # GMS nodes (sequential senders)
    resend_delay_s: float = 1.0  # Chat Server flex-push-resend-delay (1 s is its minimum)
    resend_attempts: int = 3
    duplicate_rate: float = 0.02  # triggers also sent twice, unchanged
    drain_timeout_s: float = 30.0  # after sending stops, how long to wait for the backlog
    webhook: bool = False  # ours only: also measure trigger -> webhook received
    marker_ttl_s: int = 0  # ours only: CHAT_STATE_TTL_S = SESSION_IDLE_TTL_S = this; measure after it
    seed: int = 1
    require_alias: bool = True  # the Chat API rejects a missing/stale alias (always off for naive)
    # Protocol noise; the rates below apply only when `noise` is set.
    noise: bool = False
    ahead_rate: float = 0.02  # event batches another client fetches before their triggers go out
    late_rate: float = 0.02  # triggers held on their node ...
    late_min_ms: int = 100  # ... for a uniform 100-300 ms
    late_max_ms: int = 300
    alias_change: float = 0.05  # successful Refreshes that hand out a new alias
    # Event batches preceded by an alias change outside any Refresh (off by default: not in the protocol
    # doc; each one costs about one refused Refresh, recovered from the next trigger's app-dbid).
    alias_switch: float = 0.0

    def faults(self, system: str) -> Faults:
        """The Chat API's switches for one run of `system`."""
        noisy = self.noise
        return Faults(
            alias_change=self.alias_change if noisy else 0.0,
            alias_switch=self.alias_switch if noisy else 0.0,
            ahead_rate=self.ahead_rate if noisy else 0.0,
            require_alias=self.require_alias and system == "ours",
            rng=random.Random(self.seed + 2),
        )
