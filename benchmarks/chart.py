"""The sweep's chart docs/benchmark-sweep.png: latency and delivered throughput against offered load."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.targets import TARGET_P50_MS, TARGET_P99_MS, Run, saturated

CHART = Path(__file__).resolve().parent.parent / "docs" / "benchmark-sweep.png"
LABELS = {"ours": "ours (drain jobs, coalesced Refresh)", "naive": "naive (RQ job per push, forking)"}
COLORS = {"ours": "tab:blue", "naive": "tab:red"}


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
