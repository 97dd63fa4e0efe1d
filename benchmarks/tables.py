"""The tables benchmarks/pipeline.py prints: one row per run, and the runs next to the noise targets."""

from __future__ import annotations

from benchmarks.analysis import RunResult
from benchmarks.targets import (
    NOISE_TARGET_P99_MS,
    NOISE_TARGET_RESENDS_PER_1000,
    NOISE_TARGET_STALE_ALIAS,
    TARGET_RATE,
    target_misses,
)


def _ms(value: float | None) -> str:
    return "timeout" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def format_table(results: list[RunResult]) -> str:
    header = (
        "| system | workers | offered/s | sent/s | accepted/s | events/s | stream p50 / p95 / p99 ms "
        "| webhook p50 / p99 ms | refresh/trigger | resends | stream dups | undelivered "
        "| Redis B/chat | after end (no streams) | RSS ingress / workers MiB |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        s = r.latency_stream_ms
        w = r.latency_webhook_ms
        hook = f"{_ms(w['p50'])} / {_ms(w['p99'])}" if w else "-"
        workers_rss = sum(v["peak"] for k, v in r.rss_kb.items() if k.startswith("worker"))
        ingress_rss = r.rss_kb.get("ingress", {}).get("peak", 0)
        after = r.redis["after_end_without_streams_delta_bytes"]
        system = f"{r.system}+noise" if r.noise else r.system
        lines.append(
            f"| {system} | {r.workers} | {r.offered_rate:.0f} | {r.sent_rate:.0f} | {r.accepted_rate:.0f} "
            f"| {r.delivered_rate:.0f} | {_ms(s['p50'])} / {_ms(s['p95'])} / {_ms(s['p99'])} | {hook} "
            f"| {r.refreshes_per_trigger:.2f} | {r.resends_window} | {r.stream_duplicates} "
            f"| {r.events_undelivered} "
            f"| {r.redis['per_active_chat_bytes']} | {after / 1024:+.0f} KiB "
            f"| {ingress_rss / 1024:.0f} / {workers_rss / 1024:.0f} |"
        )
    return "\n".join(lines)


def format_noise_table(results: list[RunResult]) -> str:
    """Each run with and without protocol noise, next to the targets."""
    header = (
        "| system | workers | noise | stream p50 / p99 / p99.9 ms | resends per 1,000 triggers "
        "| Refreshes stale / missing alias (rejected) | events missing "
        "| late pushes / alias changes / switches / other-client Refreshes | targets |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        s = r.latency_stream_ms
        n = r.noise_counts
        misses = target_misses(r)
        lines.append(
            f"| {r.system} | {r.workers} | {'on' if r.noise else 'off'} "
            f"| {_ms(s['p50'])} / {_ms(s['p99'])} / {_ms(s['p99.9'])} "
            f"| {r.resends_per_1000_triggers:.2f} ({r.resends_window} / {r.triggers_window}) "
            f"| {r.refreshes_stale_alias} / {r.refreshes_missing_alias} ({r.refreshes_alias_error}) "
            f"| {r.events_undelivered} "
            f"| {n.get('late_pushes', 0)} / {n.get('alias_changes', 0)} / {n.get('alias_switches', 0)} "
            f"/ {n.get('other_client_refreshes', 0)} "
            f"| {'met' if not misses else 'missed: ' + ', '.join(misses)} |"
        )
    lines.append(
        f"Targets (2 workers, ~{TARGET_RATE:.0f} triggers/s, with noise): stream p99 <= "
        f"{NOISE_TARGET_P99_MS:.0f} ms, <= {NOISE_TARGET_RESENDS_PER_1000:.0f} resend per 1,000 fresh "
        f"triggers, {NOISE_TARGET_STALE_ALIAS} Refreshes with a stale or missing alias, no event missing."
    )
    return "\n".join(lines)
