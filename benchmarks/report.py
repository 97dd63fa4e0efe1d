"""The sweep's report: the measured tables in docs/benchmarks.md, between the `sweep:begin` /
`sweep:end` markers (text outside them is kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.targets import (
    SATURATED_P99_MS,
    SATURATED_SHARE,
    TARGET_P50_MS,
    TARGET_P99_MS,
    TARGET_RATE,
    TARGET_THROUGHPUT_X,
    Run,
    saturated,
)
from benchmarks.workload import MARKER_TTL_S

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- sweep:begin -->", "<!-- sweep:end -->"


def _ms(value: float | None) -> str:
    if value is None:
        return "undelivered"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _kib(value: float) -> str:
    return f"{value / 1024:,.0f} KiB" if abs(value) >= 1024 else f"{value:.0f} B"


def sustained(runs: list[Run], system: str) -> float:
    """Highest offered load the system kept up with (not saturated)."""
    return max((r["offered_rate"] for r in runs if r["system"] == system and not saturated(r)), default=0.0)


def peak(runs: list[Run], system: str) -> float:
    """Highest delivered events/s seen at any load (possibly while falling behind)."""
    return max((r["delivered_rate"] for r in runs if r["system"] == system), default=0.0)


def targets_table(document: dict[str, Any]) -> list[str]:
    runs = document["runs"]
    at = [r for r in runs if r["system"] == "ours" and r["offered_rate"] == TARGET_RATE]
    lines = ["| target | measured | met? |", "|---|---|---|"]
    if at:
        s = at[0]["latency_stream_ms"]
        ok = s["p50"] is not None and s["p99"] is not None
        ok = ok and s["p50"] <= TARGET_P50_MS and s["p99"] <= TARGET_P99_MS
        lines.append(
            f"| trigger-to-stream p50 <= {TARGET_P50_MS:g} ms and p99 <= {TARGET_P99_MS:g} ms at "
            f"{TARGET_RATE:g} triggers/s (ours, 2 workers) | p50 {_ms(s['p50'])} ms, p99 {_ms(s['p99'])} ms "
            f"| {'yes' if ok else 'no'} |"
        )
    ours_s, naive_s = sustained(runs, "ours"), sustained(runs, "naive")
    ratio = ours_s / naive_s if naive_s else float("inf")
    lines.append(
        f"| sustained throughput >= {TARGET_THROUGHPUT_X:g}x the naive baseline (highest offered load kept "
        f"up with, 2 workers) | ours {ours_s:g}/s, naive {naive_s:g}/s: {ratio:.1f}x "
        f"(peak delivered {peak(runs, 'ours'):.0f} vs {peak(runs, 'naive'):.0f} events/s) "
        f"| {'yes' if ratio >= TARGET_THROUGHPUT_X else 'no'} |"
    )
    memory = document.get("memory")
    if memory:
        run = memory["runs"][0]
        info = run["redis"]["info"]
        base, expired = info["baseline"], info.get("after_markers_expired", {})
        if expired:
            lines.append(
                "| Redis memory returns to its idle level after sessions end | once every chat ended: "
                f"{expired['keys'] - base['keys']} keys more than idle, dataset "
                f"{_kib(expired['used_memory_dataset'] - base['used_memory_dataset'])} above idle "
                f"(used_memory {_kib(expired['used_memory'] - base['used_memory'])}, of which client "
                f"buffers {_kib(expired['mem_clients_normal'] - base['mem_clients_normal'])} and script "
                f"cache {_kib(expired['used_memory_scripts'] - base['used_memory_scripts'])}); sink streams "
                f"excluded, markers after their TTLs ({MARKER_TTL_S} s in this check) "
                "| yes for the pipeline's state; the sink streams (7 days) and the markers "
                "(`CHAT_STATE_TTL_S`, 8 days by default) stay until their TTLs |"
            )
    return lines


def sweep_table(runs: list[Run]) -> list[str]:
    lines = [
        "| system | offered/s | GMS sent/s | accepted/s | delivered events/s "
        "| trigger->stream p50 / p95 / p99 ms | event->stream p99 ms | Refresh per trigger "
        "| resends in window "
        "| stream duplicates | undelivered "
        "| machine CPU busy | saturated |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["system"] != "ours", r["offered_rate"])):
        s = r["latency_stream_ms"]
        busy = r["cpu_s"].get("machine busy", 0.0) / max(r["window_s"], 1e-9)
        if r["sender_limited"]:
            why = ["yes: the GMS senders could not offer the load"]
        else:
            why = ["yes" if r["saturated"] else "no"]
        if not r["drained"]:
            why.append(f"(backlog left {r['drain_s']:.0f} s after the end)")
        lines.append(
            f"| {r['system']} | {r['offered_rate']:g} | {r['sent_rate']:.0f} | {r['accepted_rate']:.0f} "
            f"| {r['delivered_rate']:.0f} | {_ms(s['p50'])} / {_ms(s['p95'])} / {_ms(s['p99'])} "
            f"| {_ms(r['latency_event_ms']['p99'])} | {r['refreshes_per_trigger']:.2f} "
            f"| {r['resends_window']} | {r['stream_duplicates']} | {r['events_undelivered']} "
            f"| {busy:.2f} of 2 cores "
            f"| {' '.join(why)} |"
        )
    return lines


def compare_table(compare: dict[str, Any]) -> list[str]:
    lines = [
        "| system | workers | offered/s | accepted notifications/s | delivered events/s "
        "| trigger->stream p50 / p95 / p99 ms | trigger->webhook p50 / p95 / p99 ms | Refresh per trigger "
        "| resends | RSS ingress | RSS per worker |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in compare["runs"]:
        s, w = r["latency_stream_ms"], r["latency_webhook_ms"]
        hook = f"{_ms(w['p50'])} / {_ms(w['p95'])} / {_ms(w['p99'])}" if w else "n/a (no webhook sink)"
        workers = [v["peak"] for k, v in r["rss_kb"].items() if k.startswith("worker")]
        lines.append(
            f"| {r['system']} | {r['workers']} | {r['offered_rate']:g} | {r['accepted_rate']:.0f} "
            f"| {r['delivered_rate']:.0f} | {_ms(s['p50'])} / {_ms(s['p95'])} / {_ms(s['p99'])} | {hook} "
            f"| {r['refreshes_per_trigger']:.2f} | {r['resends_window']} "
            f"| {r['rss_kb'].get('ingress', {}).get('peak', 0) / 1024:.0f} MiB "
            f"| {max(workers, default=0) / 1024:.0f} MiB |"
        )
    return lines


def memory_table(runs: list[Run]) -> list[str]:
    lines = [
        "| system | offered/s | chats (total) | used_memory per active chat | after all ended, vs idle "
        "| without sink streams | left: dedupe markers | left: ended markers | left: RQ | left: other |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["system"] != "ours", r["offered_rate"])):
        m = r["redis"]
        census = m["census_after_end"]

        def left(*kinds: str, census: dict[str, Any] = census) -> str:
            keys = sum(census.get(k, {}).get("keys", 0) for k in kinds)
            size = sum(census.get(k, {}).get("bytes", 0) for k in kinds)
            return f"{keys} keys, {_kib(size)}" if keys else "0"

        known = {"streams", "dedupe markers", "ended markers", "rq jobs", "rq other"}
        other = [k for k in census if k not in known]
        lines.append(
            f"| {r['system']} | {r['offered_rate']:g} | {m['chats_total']} "
            f"| {_kib(m['per_active_chat_bytes'])} "
            f"| {_kib(m['after_end_delta_bytes'])} | {_kib(m['after_end_without_streams_delta_bytes'])} "
            f"| {left('dedupe markers')} | {left('ended markers')} | {left('rq jobs', 'rq other')} "
            f"| {left(*other)} |"
        )
    return lines


def cpu_table(runs: list[Run]) -> list[str]:
    lines = [
        "| system | offered/s | delivered/s | workers | ingress | Redis | GMS simulator + senders "
        "| other tenants | CPU stall (PSI some) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["system"] != "ours", r["offered_rate"])):
        cpu, span = r["cpu_s"], max(r["window_s"], 1e-9)
        pushes = max(r["accepted_rate"] * span, 1.0)
        workers = sum(v for k, v in cpu.items() if k.startswith("worker"))
        gms = sum(v for k, v in cpu.items() if k.startswith(("sender", "gms")))
        ours = workers + cpu.get("ingress", 0.0) + cpu.get("redis", 0.0) + gms
        others = max(0.0, cpu.get("machine busy", 0.0) - ours)

        def per(value: float, span: float = span, pushes: float = pushes) -> str:
            return f"{value / span:.2f} cores ({1e6 * value / pushes:,.0f} us/push)"

        lines.append(
            f"| {r['system']} | {r['offered_rate']:g} | {r['delivered_rate']:.0f} | {per(workers)} "
            f"| {per(cpu.get('ingress', 0.0))} | {per(cpu.get('redis', 0.0))} | {per(gms)} "
            f"| {others / span:.2f} cores "
            f"| {100 * cpu.get('machine cpu stall', 0.0) / span:.0f}% of the time |"
        )
    return lines


def memory_check_table(memory: dict[str, Any]) -> list[str]:
    run = memory["runs"][0]
    names = {
        "baseline": "idle, relay running (baseline)",
        "window_end": f"end of the sending window ({run['redis']['active_chats']} chats active)",
        "after_end": "every chat ended, backlog drained",
        "after_end_without_streams": "... sink streams deleted",
        "after_markers_expired": f"... {MARKER_TTL_S} s later: dedupe and ended markers expired",
    }
    lines = [
        "| moment | keys | used_memory | dataset | overhead | of which client buffers | connected clients |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in names.items():
        info = run["redis"]["info"].get(key)
        if info:
            lines.append(
                f"| {label} | {info['keys']} | {_kib(info['used_memory'])} "
                f"| {_kib(info['used_memory_dataset'])} "
                f"| {_kib(info['used_memory_overhead'])} | {_kib(info['mem_clients_normal'])} "
                f"| {info['connected_clients']} |"
            )
    left = run["redis"]["after_markers_expired"].get("census", {})
    lines += ["", "Keys left once the markers expired: " + (
        ", ".join(f"{kind} {v['keys']}" for kind, v in sorted(left.items())) or "none"
    ) + "."]  # fmt: skip
    return lines


def render(document: dict[str, Any]) -> str:
    runs: list[Run] = document["runs"]
    settings, m = document["settings"], document["machine"]
    out = [
        BEGIN,
        "",
        f"Measured {document['generated']} on {m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, "
        "shared with other work (see the CPU columns). Regenerate with `python benchmarks/sweep.py`.",
        "",
        f"Workload per point: {settings['chats']} concurrent reliable-mode chats (40 events each, then a new "
        f"chat), bursty activity, {settings['senders']} GMS nodes (sequential keep-alive senders), Chat "
        "Server resend delay 1 s (its minimum) with up to 3 resends, 2% exact duplicates, every trigger "
        f"carrying `secure-key`; {settings['duration']:g} s of sending per point of which the first "
        f"{settings['warmup']:g} s are not measured; {settings['workers']} worker processes; a fresh Redis, "
        "Chat API simulator and relay per point.",
        "",
        "### Targets",
        "",
        *targets_table(document),
        "",
        "![latency and delivered throughput against offered load](benchmark-sweep.png)",
        "",
        "### Load sweep (2 workers)",
        "",
        f"Saturated = delivered < {SATURATED_SHARE:.0%} of the offered load, or p99 > "
        f"{SATURATED_P99_MS:g} ms, or the GMS senders could not offer the load. *trigger->stream*: from the "
        "trigger's POST leaving GMS to the event's entry in `gms-relay:events:{deviceId}` (entry id = "
        "Redis server time); an event "
        "returned by a Refresh for an earlier trigger counts as 0. *event->stream*: from the moment Chat "
        "Server generated the trigger (so GMS queueing included). *accepted*: pushes answered 200 per "
        "second, resends and duplicates included.",
        "",
        *sweep_table(runs),
        "",
    ]
    if document.get("compare"):
        compare = document["compare"]
        out += [
            f"### 1 and 2 worker processes at {compare['runs'][0]['offered_rate']:g} triggers/s",
            "",
            *compare_table(compare),
            "",
        ]
    if document.get("webhook"):
        webhook = document["webhook"]
        out += [
            f"### With a webhook sink ({webhook['runs'][0]['offered_rate']:g} triggers/s)",
            "",
            "Ours with `WEBHOOK_URL` set to the simulator's receiver (its own process, signed deliveries, "
            "`WEBHOOK_SECRET` set); *trigger->webhook* ends when the receiver got the event's delivery.",
            "",
            *compare_table(webhook),
            "",
        ]
    out += [
        "### Redis memory",
        "",
        "*per active chat*: (used_memory at the end of the sending window - idle baseline) / concurrent "
        "chats, everything included (sink streams, markers, RQ jobs). *after all ended*: once every chat "
        "ended and the backlog drained. What is left, by kind (MEMORY USAGE):",
        "",
        *memory_table(runs),
        "",
        *(
            [
                f"Memory check (ours, {document['memory']['runs'][0]['offered_rate']:g} triggers/s, "
                f"`CHAT_STATE_TTL_S` = {MARKER_TTL_S} s so that the ended markers expire within the run):",
                "",
                *memory_check_table(document["memory"]),
                "",
            ]
            if document.get("memory")
            else []
        ),
        "### CPU per component (measurement window)",
        "",
        *cpu_table(runs),
        "",
        END,
    ]
    return "\n".join(out)


def write_doc(document: dict[str, Any]) -> None:
    block = render(document)
    if DOC.exists():
        text = DOC.read_text()
        if BEGIN in text and END in text:
            head, _, rest = text.partition(BEGIN)
            _, _, tail = rest.partition(END)
            DOC.write_text(head + block + tail)
            return
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(f"# Pipeline benchmarks\n\n{block}\n")
