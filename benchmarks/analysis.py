"""A run's records turned into its result: latency percentiles, rates in the measurement window,
Refreshes, resends, duplicates and saturation (RunResult, the JSON of each run)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from benchmarks.load import GmsStats
from benchmarks.senders import SendRecord
from benchmarks.targets import SATURATED_P99_MS, SATURATED_SHARE
from benchmarks.workload import Workload
from simulator.chat_api import RefreshRecord


def percentiles(values: list[float], undelivered: int = 0) -> dict[str, float | None]:
    """p50/p95/p99/p99.9/max in ms; undelivered values count as infinitely late (reported as None)."""
    ordered = sorted(values) + [math.inf] * undelivered
    if not ordered:
        return {"p50": None, "p95": None, "p99": None, "p99.9": None, "max": None, "n": 0}

    def pick(share: float) -> float | None:
        value = ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]
        return None if math.isinf(value) else round(value, 2)

    return {
        "p50": pick(0.5),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "p99.9": pick(0.999),
        "max": pick(1.0),
        "n": len(ordered),
    }


@dataclass
class RunResult:
    system: str
    workers: int
    offered_rate: float
    window_s: float
    sent_rate: float  # pushes POSTed per second in the window (all kinds, resends and duplicates too)
    accepted_rate: float  # notifications answered 200 per second in the window
    delivered_rate: float  # distinct events reaching the stream per second in the window
    latency_stream_ms: dict[str, float | None]  # trigger POST sent -> event in the stream
    latency_event_ms: dict[str, float | None]  # trigger generated (event appended) -> event in the stream
    latency_webhook_ms: dict[str, float | None] | None
    push_reply_ms: dict[str, float | None]
    sender_lag_ms: dict[str, float | None]  # GMS queueing before a push left (sender-bound if high)
    events_total: int
    events_delivered: int
    events_undelivered: int
    stream_duplicates: int
    triggers: int
    pushes: int
    rejected: int
    resends: int  # over the whole run, the closing of every chat at the end included
    resends_window: int  # sent during the measurement window
    exhausted: int
    refreshes: dict[str, int]
    refreshes_per_trigger: float
    outcomes: dict[str, int]
    redis: dict[str, Any]
    rss_kb: dict[str, dict[str, int]]
    cpu_s: dict[str, float]
    counters: dict[str, float]
    rq_jobs: dict[str, float]  # jobs the RQ workers ran: drains (ours) or one per push (naive)
    drained: bool
    drain_s: float
    saturated: bool = False
    sender_limited: bool = False
    notes: list[str] = field(default_factory=list)
    noise: bool = False  # run with protocol noise
    triggers_window: int = 0  # fresh triggers sent in the measurement window
    resends_per_1000_triggers: float = 0.0  # in the measurement window
    # Refreshes whose alias was not the chat's current one (RefreshLog alias_kind), over the whole run:
    # stale (an alias the chat had before) or unknown, and missing (none sent). Target: 0.
    refreshes_stale_alias: int = 0
    refreshes_missing_alias: int = 0
    refreshes_alias_error: int = 0  # of those, answered HTTP 400 (require_alias)
    require_alias: bool = True
    # What the noise did: late pushes, alias changes on Refresh, switches, other-client Refreshes.
    noise_counts: dict[str, int] = field(default_factory=dict)


def analyse(
    *,
    system_name: str,
    workers: int,
    workload: Workload,
    window: tuple[float, float],
    records: list[SendRecord],
    stream_first: dict[tuple[str, int], float],
    stream_repeats: int,
    hook_first: dict[tuple[str, int], float] | None,
    expected: int,
    gms_stats: GmsStats,
    refreshes: dict[str, int],
    refresh_records: list[RefreshRecord],
    noise_counts: dict[str, int],
    require_alias: bool,
    redis_info: dict[str, Any],
    rss: dict[str, dict[str, int]],
    cpu: dict[str, float],
    counters: dict[str, float],
    rq_jobs: dict[str, float],
    drained: bool,
    drain_s: float,
    notes: list[str],
) -> RunResult:
    start, end = window
    span = max(end - start, 1e-9)
    announced: dict[tuple[str, int], float] = {}
    generated: dict[tuple[str, int], float] = {}
    for sid, index, attempt, position, duplicate, dispatched, sent_at, *_rest in records:
        if attempt == 0 and not duplicate and position != -1:
            announced.setdefault((sid, index), sent_at)
            generated.setdefault((sid, index), dispatched)
    in_window = {k: t for k, t in announced.items() if start <= t <= end}
    latencies, from_event, late = [], [], 0
    for key, sent_at in in_window.items():
        if key in stream_first:
            # An event can reach the stream before its own trigger left GMS (a Refresh for an earlier
            # trigger returned it): that counts as 0.
            latencies.append(max(0.0, (stream_first[key] - sent_at) * 1000))
            from_event.append(max(0.0, (stream_first[key] - generated[key]) * 1000))
        else:
            late += 1
    hook_latency = None
    if hook_first is not None:
        hooks = [max(0.0, (hook_first[k] - t) * 1000) for k, t in in_window.items() if k in hook_first]
        hook_latency = percentiles(hooks, len(in_window) - len(hooks))
    windowed = [r for r in records if start <= r[6] <= end]
    accepted = sum(1 for r in windowed if r[8] == 200 and start <= r[7] <= end)
    delivered = sum(1 for t in stream_first.values() if start <= t <= end)
    triggers = sum(1 for r in records if r[2] == 0 and not r[4])
    refresh_total = sum(refreshes.values())
    result = RunResult(
        system=system_name,
        workers=workers,
        offered_rate=workload.rate,
        window_s=round(span, 2),
        sent_rate=round(len(windowed) / span, 1),
        accepted_rate=round(accepted / span, 1),
        delivered_rate=round(delivered / span, 1),
        latency_stream_ms=percentiles(latencies, late),
        latency_event_ms=percentiles(from_event, late),
        latency_webhook_ms=hook_latency,
        push_reply_ms=percentiles([(r[7] - r[6]) * 1000 for r in windowed]),
        # Late (noise) pushes were held on purpose: not GMS queueing.
        sender_lag_ms=percentiles([(r[6] - r[5]) * 1000 for r in windowed if not r[4] and not r[10]]),
        events_total=expected,
        events_delivered=len(stream_first),
        events_undelivered=max(0, expected - len(stream_first)),
        stream_duplicates=stream_repeats,
        triggers=triggers,
        pushes=len(records),
        rejected=sum(1 for r in records if r[8] != 200),
        resends=sum(1 for r in records if r[2] > 0 and not r[4]),
        resends_window=sum(1 for r in windowed if r[2] > 0 and not r[4]),
        exhausted=gms_stats.exhausted,
        refreshes=refreshes,
        refreshes_per_trigger=round(refresh_total / max(triggers, 1), 3),
        outcomes=dict(Counter(r[9] for r in records)),
        redis=redis_info,
        rss_kb=rss,
        cpu_s=cpu,
        counters={
            k: v for k, v in counters.items() if not k.startswith("h:") or k.endswith(("|count", "|sum"))
        },
        rq_jobs=rq_jobs,
        drained=drained,
        drain_s=round(drain_s, 2),
        notes=notes,
        noise=workload.noise,
        refreshes_stale_alias=sum(1 for r in refresh_records if r.alias_kind in ("stale", "unknown")),
        refreshes_missing_alias=sum(1 for r in refresh_records if r.alias_kind == "missing"),
        refreshes_alias_error=sum(1 for r in refresh_records if r.outcome == "alias_error"),
        require_alias=require_alias,
        noise_counts=noise_counts,
    )
    result.triggers_window = sum(1 for r in windowed if r[2] == 0 and not r[4] and r[3] != -1)
    result.resends_per_1000_triggers = round(1000 * result.resends_window / max(result.triggers_window, 1), 2)
    p99 = result.latency_stream_ms["p99"]
    result.saturated = result.delivered_rate < SATURATED_SHARE * workload.rate or (
        p99 is None or p99 > SATURATED_P99_MS
    )
    sent_fresh = sum(1 for r in windowed if r[2] == 0 and not r[4]) / span
    result.sender_limited = sent_fresh < SATURATED_SHARE * workload.rate
    if result.sender_limited:
        result.notes.append(
            f"the GMS senders only sent {sent_fresh:.0f} fresh triggers/s of the {workload.rate:.0f} offered"
        )
    return result
