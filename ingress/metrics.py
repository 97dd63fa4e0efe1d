"""Ingress metrics: this process's push counts and reply latency, plus the pipeline's (from Redis)."""

from __future__ import annotations

import time
from bisect import bisect_left
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shared import keys

# RQ adds each worker to this set for every queue it listens on (rq.worker_registration's
# WORKERS_BY_QUEUE_KEY); every relay worker listens on the drain queue, other apps' workers do not.
RQ_DRAIN_WORKERS = f"rq:workers:{keys.DRAIN_QUEUE}"

REPLY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_LATENCY = ("gms_relay_ingress_seconds", "time from request start to reply, /push")


class _Histogram(Collector):
    """The reply-latency histogram, as prometheus_client's Histogram renders it, observed with a bisect and
    two additions: no lock and no per-bucket loop on the reply path (one process, one event loop)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.bounds = name, documentation, buckets
        self.les = [*(floatToGoString(b) for b in buckets), "+Inf"]  # type: ignore[no-untyped-call]
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # the first bucket whose bound is >= seconds
        self.sum += seconds

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation)
        buckets = [(le, float(n)) for le, n in zip(self.les, accumulate(self.counts), strict=True)]
        family.add_metric([], buckets, self.sum)
        family.add_sample(f"{self.name}_created", {}, self.created)
        return [family]


class IngressMetrics:
    """Push counts and reply latency. A push costs a dict update and a bisect; the counters' children
    are created at a kind's first push (their _created time) and take the counts when rendered."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.pushes = Counter(
            "gms_relay_pushes",
            "pushes received, by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.latency = _Histogram(*_LATENCY, REPLY_BUCKETS_S)
        self.registry.register(self.latency)
        self._children: dict[tuple[str, str], Counter] = {}
        self._pending: dict[tuple[str, str], int] = {}

    def push(self, kind: str, outcome: str, seconds: float) -> None:
        key = (kind, outcome)
        if key not in self._children:
            self._children[key] = self.pushes.labels(kind, outcome)
        self._pending[key] = self._pending.get(key, 0) + 1
        self.latency.observe(seconds)

    def render(self) -> bytes:
        for key, count in self._pending.items():
            self._children[key].inc(count)
        self._pending.clear()
        return generate_latest(self.registry)


async def live_workers(client: Any) -> int:
    """Relay workers whose RQ registration is alive: the workers have no /metrics of their own, so this
    is how their absence shows. A stopped worker leaves the set at once; a killed one's set member
    lingers, but its registration key expires (RQ's worker_ttl + 60 s) and is then not counted."""
    members = await client.smembers(RQ_DRAIN_WORKERS)
    return int(await client.exists(*members)) if members else 0
