"""Ingress metrics: this process's push counts and reply latency, plus the pipeline's (from Redis)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from shared import keys

# RQ adds each worker to this set for every queue it listens on (rq.worker_registration's
# WORKERS_BY_QUEUE_KEY); every relay worker listens on the drain queue, other apps' workers do not.
RQ_DRAIN_WORKERS = f"rq:workers:{keys.DRAIN_QUEUE}"

REPLY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.pushes = Counter(
            "gms_relay_pushes",
            "pushes received, by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gms_relay_ingress_seconds",
            "time from request start to reply, /push",
            buckets=REPLY_BUCKETS_S,
            registry=self.registry,
        )

        self._children: dict[tuple[str, str], Counter] = {}

    def push(self, kind: str, outcome: str, seconds: float) -> None:
        child = self._children.get((kind, outcome))
        if child is None:
            child = self._children[(kind, outcome)] = self.pushes.labels(kind, outcome)
        child.inc()
        self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def live_workers(client: Any) -> int:
    """Relay workers whose RQ registration is alive: the workers have no /metrics of their own, so this
    is how their absence shows. A stopped worker leaves the set at once; a killed one's set member
    lingers, but its registration key expires (RQ's worker_ttl + 60 s) and is then not counted."""
    members = await client.smembers(RQ_DRAIN_WORKERS)
    return int(await client.exists(*members)) if members else 0
