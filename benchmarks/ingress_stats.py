"""What one measured run of benchmarks/ingress.py yields: latency percentiles, rate, replies, CPU."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Run:
    """One target, one round: latency percentiles in microseconds, rate in requests per second."""

    target: str
    requests: int
    p50_us: float
    p99_us: float
    mean_us: float
    max_us: float
    rate: float
    non_200: int
    replies: dict[str, int] = field(default_factory=dict)
    # CPU time per measured request (where it goes), when the run was probed.
    server_cpu_us: float | None = None
    redis_cpu_us: float | None = None
    client_cpu_us: float | None = None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, math.ceil(round(q * len(sorted_values), 6)))
    return sorted_values[rank - 1]


def summarize(
    target: str,
    latencies: list[int],
    elapsed_s: float,
    outcomes: Counter[bytes],
    cpu: tuple[float, float, float] | None = None,
) -> Run:
    ordered = sorted(ns / 1000 for ns in latencies)
    non_200 = sum(n for reply, n in outcomes.items() if reply.startswith(b"HTTP "))
    server_cpu, redis_cpu, client_cpu = (c * 1e6 / len(latencies) for c in cpu) if cpu else (None,) * 3
    return Run(
        target=target,
        requests=len(latencies),
        p50_us=percentile(ordered, 0.50),
        p99_us=percentile(ordered, 0.99),
        mean_us=statistics.fmean(ordered),
        max_us=ordered[-1],
        rate=len(latencies) / elapsed_s,
        non_200=non_200,
        replies={reply.decode(errors="replace"): n for reply, n in outcomes.most_common()},
        server_cpu_us=server_cpu,
        redis_cpu_us=redis_cpu,
        client_cpu_us=client_cpu,
    )


def median_run(runs: list[Run]) -> dict[str, float]:
    medians = {
        "p50_us": statistics.median(r.p50_us for r in runs),
        "p99_us": statistics.median(r.p99_us for r in runs),
        "rate": statistics.median(r.rate for r in runs),
    }
    for name in ("server_cpu_us", "redis_cpu_us", "client_cpu_us"):
        values = [v for r in runs if (v := getattr(r, name)) is not None]
        if values:
            medians[name] = statistics.median(values)
    return medians
