"""Load sweep of the whole pipeline, ours against the naive baseline, and the report in docs/.

For each offered load (100, 250, 500, 1000, 2000 triggers/s, then x1.5 beyond) it runs
benchmarks/pipeline.py once per system with 2 worker processes, each point in its own process and each
under ~1 minute. A system is swept until it has been saturated at `--past-saturation` consecutive
levels (delivered < 90% of offered, or p99 > 1 s, or the GMS senders could not offer the load); a
system already saturated at the lowest level is probed downwards (halving) to find where it copes.
Then it runs pipeline.py once at `--compare-rate` with 1 and 2 workers (and `--webhook`).

It writes docs/benchmarks.md (the measured tables between the `sweep:begin` / `sweep:end` markers;
text outside them is kept) and the chart docs/benchmark-sweep.png.

    python benchmarks/sweep.py [--duration 15] [--json /tmp/sweep.json]
    python benchmarks/sweep.py --from-json /tmp/sweep.json     # only rewrite the docs
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.pipeline import (  # noqa: E402
    SATURATED_P99_MS,
    SATURATED_SHARE,
    TARGET_P50_MS,
    TARGET_P99_MS,
    TARGET_RATE,
    TARGET_THROUGHPUT_X,
    machine,
)

DOC = _ROOT / "docs" / "benchmarks.md"
CHART = _ROOT / "docs" / "benchmark-sweep.png"
BEGIN, END = "<!-- sweep:begin -->", "<!-- sweep:end -->"
POINT_TIMEOUT_S = 330
MARKER_TTL_S = 5  # CHAT_STATE_TTL_S (ended markers) of the memory check
QUIET_POLL_S = 5.0
OTHER_BENCHMARK = "benchmarks/ingress.py"  # another benchmark sharing this machine
LABELS = {"ours": "ours (drain jobs, coalesced Refresh)", "naive": "naive (RQ job per push, forking)"}
COLORS = {"ours": "tab:blue", "naive": "tab:red"}

Run = dict[str, Any]


def wait_for_quiet() -> None:
    """Do not measure while another benchmark runs on this machine."""
    announced = False
    while subprocess.run(["pgrep", "-f", OTHER_BENCHMARK], capture_output=True).returncode == 0:
        if not announced:
            print(f"   waiting for {OTHER_BENCHMARK} to finish ...", file=sys.stderr)
            announced = True
        time.sleep(QUIET_POLL_S)


def run_pipeline(extra: list[str]) -> dict[str, Any]:
    """One benchmarks/pipeline.py invocation; its JSON document."""
    wait_for_quiet()
    with tempfile.TemporaryDirectory(prefix="gms-sweep-") as tmp:
        out = Path(tmp) / "run.json"
        argv = [sys.executable, str(_HERE / "pipeline.py"), *extra, "--json", str(out)]
        completed = subprocess.run(argv, cwd=_ROOT, timeout=POINT_TIMEOUT_S, capture_output=True, text=True)
        if completed.returncode != 0 or not out.exists():
            raise RuntimeError(f"pipeline.py failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
        document: dict[str, Any] = json.loads(out.read_text())
        return document


def common_args(args: argparse.Namespace) -> list[str]:
    return [
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--chats",
        str(args.chats),
        "--senders",
        str(args.senders),
        "--drain-timeout",
        str(args.drain_timeout),
    ]


def point(args: argparse.Namespace, system: str, rate: float) -> Run:
    print(f"-- {system} at {rate:g} triggers/s ...", file=sys.stderr)
    document = run_pipeline(
        [*common_args(args), "--systems", system, "--workers", str(args.workers), "--rate", str(rate)]
    )
    run: Run = document["runs"][0]
    s = run["latency_stream_ms"]
    print(
        f"   delivered {run['delivered_rate']:.0f}/s, p50 {s['p50']} p99 {s['p99']} ms, "
        f"saturated={run['saturated']} sender_limited={run['sender_limited']}",
        file=sys.stderr,
    )
    return run


def saturated(run: Run) -> bool:
    """Could not keep up within the measurement window (the backlog after it is not counted: closing
    every chat at the end is a burst of its own)."""
    return bool(run["saturated"] or run["sender_limited"])


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    rates = [float(r) for r in args.rates.split(",")]
    runs: list[Run] = []
    for system in args.systems:
        level, streak, probed = 0, 0, False
        while streak < args.past_saturation:
            if level < len(rates):
                rate = rates[level]
            else:
                rate = round(rates[-1] * 1.5 ** (level - len(rates) + 1))
                if rate > args.max_rate:
                    break
            run = point(args, system, rate)
            runs.append(run)
            streak = streak + 1 if saturated(run) else 0
            if level == 0 and streak and not probed:
                probed = True  # saturated at the lowest level: find where it copes
                low = rate / 2
                while low >= args.min_rate:
                    below = point(args, system, low)
                    runs.append(below)
                    if not saturated(below):
                        break
                    low /= 2
            level += 1
        # One more point between the highest load it kept up with and the lowest it did not.
        mine = [r for r in runs if r["system"] == system]
        ok = [r["offered_rate"] for r in mine if not saturated(r)]
        over = [r["offered_rate"] for r in mine if saturated(r) and r["offered_rate"] > max(ok, default=0.0)]
        if ok and over:
            runs.append(point(args, system, round((max(ok) * min(over)) ** 0.5)))
    compare = None
    if args.compare_rate > 0:
        print(f"-- 1 and 2 workers at {args.compare_rate:g} triggers/s ...", file=sys.stderr)
        extra = [*common_args(args), "--systems", ",".join(args.systems), "--workers", "1,2"]
        compare = run_pipeline([*extra, "--rate", str(args.compare_rate)])
    webhook = None
    if args.webhook_rate > 0:
        print(f"-- webhook sink at {args.webhook_rate:g} triggers/s ...", file=sys.stderr)
        extra = [*common_args(args), "--systems", "ours", "--workers", str(args.workers), "--webhook"]
        webhook = run_pipeline([*extra, "--rate", str(args.webhook_rate)])
    memory = None
    if args.memory_rate > 0:
        print(
            f"-- memory check at {args.memory_rate:g} triggers/s, marker TTLs {MARKER_TTL_S} s ...",
            file=sys.stderr,
        )
        extra = [*common_args(args), "--systems", "ours", "--workers", str(args.workers)]
        extra += ["--rate", str(args.memory_rate), "--marker-ttl", str(MARKER_TTL_S)]
        memory = run_pipeline(extra)
    return {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "from_json")},
        "runs": runs,
        "compare": compare,
        "webhook": webhook,
        "memory": memory,
    }


# --- the report -------------------------------------------------------------------------------------


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


def plot(document: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    runs: list[Run] = document["runs"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.4))
    cap = (document["settings"]["duration"] + document["settings"]["drain_timeout"]) * 1000
    floor = 0.5
    lines = (
        ("latency_stream_ms", "p50", "-", "trigger->stream p50"),
        ("latency_stream_ms", "p99", "--", "trigger->stream p99"),
        ("latency_event_ms", "p99", ":", "event->stream p99"),
    )
    for system in ("ours", "naive"):
        points = sorted((r for r in runs if r["system"] == system), key=lambda r: r["offered_rate"])
        if not points:
            continue
        x = [r["offered_rate"] for r in points]
        color = COLORS[system]
        for field, key, style, label in lines:
            y = [r[field][key] for r in points]
            shown = [cap if v is None else max(v, floor) for v in y]
            if field == "latency_stream_ms":  # meaningless where triggers sat in GMS queues: not drawn
                shown = [math.nan if r["sender_limited"] else v for r, v in zip(points, shown, strict=True)]
            marker = "o" if key == "p50" else "."
            left.plot(x, shown, style, color=color, marker=marker, label=f"{system} {label}")
        late = [r["offered_rate"] for r in points if r["latency_event_ms"]["p99"] is None]
        if late:
            left.annotate("undelivered", (late[0], cap), fontsize=7, color=color, ha="left", va="bottom")
        right.plot(
            x, [r["delivered_rate"] for r in points], "-", color=color, marker="o", label=LABELS[system]
        )
        sat = [r for r in points if saturated(r)]
        right.scatter(
            [r["offered_rate"] for r in sat],
            [r["delivered_rate"] for r in sat],
            s=140,
            facecolors="none",
            edgecolors=color,
            linewidths=1.5,
        )
    offered = sorted({r["offered_rate"] for r in runs}) or [1.0]
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(offered)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        axis.xaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
        axis.tick_params(axis="x", labelrotation=45, labelsize=8)
        axis.set_xlabel("offered load (triggers/s)")
        axis.grid(True, which="major", alpha=0.3)
    left.axhline(TARGET_P50_MS, color="grey", linestyle=":", linewidth=1)
    left.axhline(TARGET_P99_MS, color="grey", linestyle="-.", linewidth=1)
    left.text(offered[0], TARGET_P50_MS, "p50 target", fontsize=7, va="bottom", color="grey")
    left.text(offered[0], TARGET_P99_MS, "p99 target", fontsize=7, va="bottom", color="grey")
    left.set(ylabel=f"latency (ms, floor {floor:g})", title="Latency (trigger->stream: not where GMS lagged)")
    left.legend(fontsize=7)
    right.plot([offered[0], offered[-1]], [offered[0], offered[-1]], ":", color="grey", linewidth=1,
               label="delivered = offered")  # fmt: skip
    right.set(ylabel="delivered events/s", title="Delivered throughput (circled: saturated)")
    right.legend(fontsize=8)
    m = document["machine"]
    figure.suptitle(
        f"gms-push-relay pipeline vs naive RQ baseline, {document['settings']['workers']} workers, "
        f"{m['cpus']} shared CPUs ({document['generated']})"
    )
    figure.tight_layout()
    CHART.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(CHART, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="100,250,500,1000,2000", help="offered loads (triggers/s)")
    parser.add_argument("--max-rate", type=float, default=8000.0, help="stop going beyond the list here")
    parser.add_argument("--min-rate", type=float, default=10.0, help="lowest load probed downwards")
    parser.add_argument("--past-saturation", type=int, default=2, help="saturated levels before stopping")
    parser.add_argument("--systems", default="ours,naive")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--drain-timeout", type=float, default=20.0)
    parser.add_argument("--compare-rate", type=float, default=TARGET_RATE, help="1 vs 2 workers; 0: skip")
    parser.add_argument("--webhook-rate", type=float, default=250.0, help="ours with a webhook sink; 0: skip")
    parser.add_argument(
        "--memory-rate", type=float, default=250.0, help="memory check with short marker TTLs; 0: skip"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--from-json", type=Path, help="only regenerate the docs from saved results")
    args = parser.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        document = json.loads(args.from_json.read_text())
    else:
        document = sweep(args)
        if args.json:
            args.json.write_text(json.dumps(document, indent=2))
    write_doc(document)
    plot(document)
    print(f"wrote {DOC.relative_to(_ROOT)} and {CHART.relative_to(_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
