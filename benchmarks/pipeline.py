"""Benchmark the whole relay (ingress + N worker processes) against the naive baseline, on loopback.

Both systems get the same workload from the same simulated GMS cluster, in the same invocation:
  ours   `gms-relay ingress` + N `gms-relay worker` processes (drain jobs, coalesced Refresh);
  naive  benchmarks/naive.py: one plain RQ job per push on N forking `rq worker` processes.

The simulated GMS is this process plus `--senders` sender processes:
  - the simulator's Chat API v2 server (simulator.server.ChatServer) and its in-memory transcripts;
  - a driver opening `--chats` concurrent reliable-mode chats (a new one whenever one ends) and adding
    bursty activity at `--rate` events/s: a message, often followed within ms by typing events and
    another message (the simulator's mix). Every event is one trigger, as Chat Server sends them;
  - Chat Server's resends: a trigger not acknowledged by a Refresh within `--resend-delay` seconds is
    sent again with notify-attempt + 1 (up to `--resend-attempts` times); `--duplicate-rate` of the
    triggers are also sent twice (exact duplicates);
  - K sender processes, each one sequential keep-alive HTTP/1.1 connection like one GMS node (a chat
    always goes through the same node), timing every push with the wall clock.
Every trigger carries `secure-key` and `app-dbid` (flex-push-content incl. both) so both systems can
Refresh; the Chat API rejects a Refresh whose alias is not the chat's current one, as a GMS in front of
several Chat Servers does (`--no-require-alias` turns that off; it is off for naive, which sends none).

Protocol noise (`--noise`, or `--compare-noise`: the same workload without, then with noise, in one
invocation on the same machine) adds to the exact duplicates and the natural repeated positions:
  - ahead notifications: another client of the customer fetches `ahead_rate` (2%) of the event batches
    at once, so the batch's triggers carry a position past the batch, beyond what the relay fetched;
  - late notifications: `late_rate` (2%) of the triggers are held 100-300 ms on their node (position,
    attempt, app-dbid and the resend timer date from when Chat Server sent them); later pushes overtake;
  - alias changes: a Refresh hands out a new alias (`alias_change`, 5%), as gms-protocol.md describes;
    `--alias-switch P` also changes it outside any Refresh before a share P of the batches (not in the
    protocol doc: a session moving to another Chat Server), which only later triggers' app-dbid reveal.

Measured per run (JSON with `--json PATH`, a table on stdout):
  - trigger-to-stream latency: trigger POST sent (wall clock) -> the event's entry in the Redis stream
    (the entry id's milliseconds are Redis server time, same clock); with `--webhook` (ours only) also
    -> the webhook delivery received. p50/p95/p99 over the events announced in the measurement window
    (after `--warmup`); an event never delivered counts as infinitely late;
  - sustained notifications/s accepted and events/s delivered (distinct (session, index)) in the window;
  - Refresh calls per trigger (coalescing), resends Chat Server had to send (and per 1,000 fresh
    triggers), Refreshes with a stale or missing alias (from the Chat API's RefreshLog), duplicates in
    the stream;
  - Redis used_memory vs the idle baseline: per active chat at the end of the window, and after every
    chat ended (with a key census by kind); ingress / worker RSS (VmRSS); CPU seconds per component.

    python benchmarks/pipeline.py [--workers 1,2] [--rate 500] [--duration 20] [--chats 200]
                                  [--systems ours,naive] [--webhook] [--noise | --compare-noise]
                                  [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
# Run as a script, this folder would come first on sys.path and benchmarks/ingress.py would shadow the
# `ingress` package: drop it and put the repo root first (the modules next to this one are imported
# as `benchmarks.<module>`).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from types import FrameType  # noqa: E402

from benchmarks.analysis import RunResult  # noqa: E402
from benchmarks.measure import machine  # noqa: E402
from benchmarks.run import run_once  # noqa: E402
from benchmarks.systems import SYSTEMS  # noqa: E402
from benchmarks.tables import format_noise_table, format_table  # noqa: E402
from benchmarks.workload import Workload  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Workload()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", default="ours,naive", help="comma-separated: ours, naive")
    parser.add_argument("--workers", default="1,2", help="worker process counts, comma-separated")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="offered triggers/s")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="sending seconds")
    parser.add_argument("--warmup", type=float, default=defaults.warmup_s)
    parser.add_argument("--chats", type=int, default=defaults.chats, help="concurrent chats")
    parser.add_argument("--events-per-chat", type=int, default=defaults.events_per_chat)
    parser.add_argument("--senders", type=int, default=defaults.senders, help="GMS nodes")
    parser.add_argument("--mode", choices=["reliable"], default="reliable")
    parser.add_argument("--resend-delay", type=float, default=defaults.resend_delay_s)
    parser.add_argument("--resend-attempts", type=int, default=defaults.resend_attempts)
    parser.add_argument("--duplicate-rate", type=float, default=defaults.duplicate_rate)
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s)
    parser.add_argument("--webhook", action="store_true", help="ours: also measure webhook latency")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--marker-ttl",
        type=int,
        default=0,
        help="ours: set CHAT_STATE_TTL_S (ended markers) to this and measure Redis once they expired",
    )
    parser.add_argument(
        "--no-require-alias",
        dest="require_alias",
        action="store_false",
        help="the Chat API accepts Refreshes with a missing or stale alias (default: HTTP 400, as a GMS in "
        "front of several Chat Servers; always accepted for naive, which sends none)",
    )
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument(
        "--noise",
        action="store_true",
        help="protocol noise: ahead and late notifications, alias changes on Refresh and outside it",
    )
    noise.add_argument(
        "--compare-noise",
        action="store_true",
        help="run every system and worker count twice, without then with noise, and compare them",
    )
    parser.add_argument(
        "--ahead-rate",
        type=float,
        default=defaults.ahead_rate,
        help="noise: share of event batches another client fetches before their triggers go out",
    )
    parser.add_argument(
        "--late-rate",
        type=float,
        default=defaults.late_rate,
        help="noise: share of triggers held on their node",
    )
    parser.add_argument(
        "--late-ms",
        default=f"{defaults.late_min_ms},{defaults.late_max_ms}",
        help="noise: how long a late trigger is held, MIN,MAX ms (uniform)",
    )
    parser.add_argument(
        "--alias-change",
        type=float,
        default=defaults.alias_change,
        help="noise: share of successful Refreshes that hand out a new alias",
    )
    parser.add_argument(
        "--alias-switch",
        type=float,
        default=defaults.alias_switch,
        help="noise: share of event batches preceded by an alias change outside any Refresh (default 0)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--profile", type=Path, help="py-spy profiles of ingress and workers go here")
    parser.add_argument("--profile-format", choices=["flamegraph", "raw", "speedscope"], default="flamegraph")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or any(s not in SYSTEMS for s in systems):
        parser.error(f"--systems: choose from {', '.join(SYSTEMS)}")
    if args.rate <= 0 or args.duration <= args.warmup:
        parser.error("--rate must be > 0 and --duration longer than --warmup")
    args.systems = systems
    args.workers = [int(w) for w in args.workers.split(",")]
    try:
        low, high = (int(v) for v in args.late_ms.split(","))
    except ValueError:
        parser.error("--late-ms: expected MIN,MAX in ms, e.g. 100,300")
    if not 0 < low <= high:
        parser.error("--late-ms: expected 0 < MIN <= MAX")
    args.late_ms = (low, high)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workload = Workload(
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        chats=args.chats,
        events_per_chat=args.events_per_chat,
        senders=args.senders,
        resend_delay_s=args.resend_delay,
        resend_attempts=args.resend_attempts,
        duplicate_rate=args.duplicate_rate,
        drain_timeout_s=args.drain_timeout,
        webhook=args.webhook,
        seed=args.seed,
        marker_ttl_s=args.marker_ttl,
        require_alias=args.require_alias,
        noise=args.noise,
        ahead_rate=args.ahead_rate,
        late_rate=args.late_rate,
        late_min_ms=args.late_ms[0],
        late_max_ms=args.late_ms[1],
        alias_change=args.alias_change,
        alias_switch=args.alias_switch,
    )
    variants = [False, True] if args.compare_noise else [workload.noise]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    # This process is the simulated GMS (Chat API server, driver, dispatcher): hand the GIL over
    # quickly so a Refresh is not held up behind the driver's threads.
    sys.setswitchinterval(0.001)
    results: list[RunResult] = []
    for workers in args.workers:
        for system in args.systems:
            for noisy in variants:
                label = f"{system}{' with noise' if noisy else ''}"
                print(f"-- {label}, {workers} worker(s), {workload.rate:.0f} triggers/s ...", file=sys.stderr)
                result = run_once(
                    system, workers, replace(workload, noise=noisy), args.profile, args.profile_format
                )
                for note in result.notes:
                    print(f"   note: {note}", file=sys.stderr)
                results.append(result)
    print(format_table(results))
    if any(r.noise for r in results):
        print()
        print(format_noise_table(results))
    if args.json:
        document = {"machine": machine(), "workload": asdict(workload), "runs": [asdict(r) for r in results]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
