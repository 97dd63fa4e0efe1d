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
# As in pipeline.py: run as a script, this folder must not shadow packages; import `benchmarks.<module>`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.chart import CHART, plot  # noqa: E402
from benchmarks.measure import machine  # noqa: E402
from benchmarks.report import DOC, write_doc  # noqa: E402
from benchmarks.targets import TARGET_RATE, Run, saturated  # noqa: E402
from benchmarks.workload import MARKER_TTL_S  # noqa: E402

POINT_TIMEOUT_S = 330
QUIET_POLL_S = 5.0
OTHER_BENCHMARK = "benchmarks/ingress.py"  # another benchmark sharing this machine


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
