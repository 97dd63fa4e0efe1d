"""Pipeline metrics kept in Redis, so every worker process adds to the same numbers.

Counters are fields of one hash (`keys.COUNTERS`); Lua scripts bump them in the transaction that does
the counted thing. Histograms are fields `h:<name>:<upper bound>` plus `:sum` and `:count`, flushed
by each process in one pipeline. `render()` turns the hash into Prometheus text.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Any

from shared import keys

LATENCY_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_HELP = {
    "push_trigger": "reliable triggers stored",
    "push_payload": "payload pushes stored",
    "push_wakeup": "wake-ups for devices without a chat",
    "push_wakeup_refresh": "wake-ups turned into a refresh of the device's chat",
    "push_duplicate": "payload pushes whose events were all staged already",
    "push_covered": "triggers already covered by a refresh",
    "push_after_end": "pushes for chats that had ended",
    "events_delivered": "transcript events written to the sinks",
    "wakeups_delivered": "device.wakeup notifications emitted",
    "commit_fenced": "commits refused because the lease had expired",
    "refresh_retried": "refreshes scheduled for retry",
    "refresh_parked": "claims that found no credentials (the chat stays parked)",
    "credentials_required": "chat.credentials_required events emitted (a chat entered the parked set)",
    "webhook_deliveries_created": "webhook deliveries created",
    "payload_late": "payload events that arrived after their gap was skipped (acknowledged, not delivered)",
    "payload_gaps_skipped": "payload gaps given up on after PAYLOAD_GAP_WAIT_MS (their events never came)",
    "webhook_sink_delivered": "webhook deliveries accepted, by sink (its index in WEBHOOK_URL)",
    "webhook_sink_retried": "webhook attempts that failed and were scheduled again, by sink",
    "webhook_sink_dead_lettered": "webhook deliveries dead-lettered (out of retries, or 410 Gone), by sink",
}
_HISTOGRAM_HELP = {
    "refresh": "Chat API Refresh calls, by outcome (ok, retry, fatal)",
    "trigger_to_stream": "push accepted to its chat's events in the stream",
    "webhook": "webhook attempts, by sink (its index in WEBHOOK_URL) and outcome (ok, rejected, error)",
}
_GAUGE_HELP = {
    "chats_dirty": "chats with work pending: due, being refreshed, or scheduled (retries, gap waits)",
    "chats_parked": "chats waiting for credentials (PUT /sessions)",
    "queue_depth": "jobs waiting in each RQ queue",
    "dead_letters": "jobs in each RQ queue's failed registry (webhook dead letters, failed drains)",
    "workers": "relay workers registered in Redis (a killed one drops out when its registration expires)",
}


class Histograms:
    """Per-process histogram buffer, flushed to Redis in one pipeline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, float] = defaultdict(float)

    def observe(self, name: str, seconds: float, labels: str = "") -> None:
        base = f"h:{name}{{{labels}}}" if labels else f"h:{name}"
        slot = bisect.bisect_left(LATENCY_BOUNDS_S, seconds)
        bound = str(LATENCY_BOUNDS_S[slot]) if slot < len(LATENCY_BOUNDS_S) else "+Inf"
        with self._lock:
            self._pending[f"{base}|{bound}"] += 1
            self._pending[f"{base}|sum"] += seconds
            self._pending[f"{base}|count"] += 1

    def count(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._pending[name] += by

    def flush(self, client: Any) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
        if not pending:
            return
        pipe = client.pipeline(transaction=False)
        for field, value in pending.items():
            if field.endswith("|sum"):
                pipe.hincrbyfloat(keys.COUNTERS, field, value)
            else:
                pipe.hincrby(keys.COUNTERS, field, int(value))
        pipe.execute()


def _labels(base: str) -> tuple[str, str]:
    if "{" in base:
        name, _, rest = base.partition("{")
        return name, rest.rstrip("}")
    return base, ""


def render(fields: dict[bytes, bytes], depths: dict[str, int]) -> str:
    """Prometheus text for the Redis-held counters, histograms and queue depths."""
    lines: list[str] = []
    hist: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    counters: dict[str, dict[str, float]] = defaultdict(dict)
    for raw_field, raw_value in sorted(fields.items()):
        field, value = raw_field.decode(), float(raw_value)
        if field.startswith("h:"):
            base, _, part = field[2:].rpartition("|")
            name, labels = _labels(base)
            hist[name][labels][part] = value
            continue
        name, labels = _labels(field)
        counters[name][labels] = value
    for name, counted in sorted(counters.items()):
        metric = f"gms_relay_{name.replace('-', '_')}_total"
        lines.append(f"# HELP {metric} {_HELP.get(name, name.replace('_', ' '))}")
        lines.append(f"# TYPE {metric} counter")
        for labels, value in sorted(counted.items()):
            lines.append(f"{metric}{{{labels}}} {value:g}" if labels else f"{metric} {value:g}")
    for name, series in sorted(hist.items()):
        metric = f"gms_relay_{name}_seconds"
        lines.append(f"# HELP {metric} {_HISTOGRAM_HELP.get(name, name.replace('_', ' '))}")
        lines.append(f"# TYPE {metric} histogram")
        for labels, parts in sorted(series.items()):
            sep = "," if labels else ""
            running = 0.0
            for bound in [*map(str, LATENCY_BOUNDS_S), "+Inf"]:
                running += parts.get(bound, 0.0)
                lines.append(f'{metric}_bucket{{{labels}{sep}le="{bound}"}} {running:g}')
            suffix = f"{{{labels}}}" if labels else ""
            lines.append(f"{metric}_sum{suffix} {parts.get('sum', 0.0):g}")
            lines.append(f"{metric}_count{suffix} {parts.get('count', 0.0):g}")
    typed: set[str] = set()
    for gauge_series, depth in sorted(depths.items()):
        gauge = gauge_series.partition("{")[0]
        if gauge not in typed:
            typed.add(gauge)
            lines.append(f"# HELP gms_relay_{gauge} {_GAUGE_HELP.get(gauge, gauge.replace('_', ' '))}")
            lines.append(f"# TYPE gms_relay_{gauge} gauge")
        lines.append(f"gms_relay_{gauge_series} {depth}")
    return "\n".join(lines) + "\n"
