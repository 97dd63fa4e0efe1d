"""Benchmark POST /push as one GMS node sees it: sequential keep-alive requests, reply latency and rate.

Three servers take the same pre-generated bodies from the same client, in interleaved rounds:
  floor  a bare Starlette endpoint doing one async LPUSH of the raw body (nothing can be cheaper),
  naive  a Starlette endpoint calling RQ `Queue.enqueue` (the design this project replaces),
  ours   the real ingress, started as `gms-relay ingress`.
Targets (issues): ours p50 <= 1.10 x floor p50, ours rate >= 2 x naive rate, and with `--senders 4`
each concurrent sender's p99 < 2 x the single-sender p99; with `--open-streams 500`, ours p50 with 500
device event streams open <= 1.1 x ours p50 with none. With `--ack-levels` (issue 14) ours also runs at
INGRESS_ACK=stored and =replicated on a primary with one replica (`--ack-sentinel`: also through a
Sentinel), in the same interleaved rounds, each compared with ours stored of the same round.

    python benchmarks/ingress.py [--requests 5000] [--rounds 3] [--senders 4 [--pace 500]] [--json out.json]
        [--open-streams 500 [--stream-events 50]] [--ack-levels [--ack-sentinel]]
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
# Run as a script, this file's folder comes first on sys.path and this file would shadow the `ingress`
# package: drop that folder and put the repo root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
from types import FrameType  # noqa: E402

from benchmarks import ingress_acks  # noqa: E402
from benchmarks.ingress_bench import stack  # noqa: E402
from benchmarks.ingress_report import run_benchmark  # noqa: E402
from benchmarks.ingress_servers import serve_baseline  # noqa: E402
from benchmarks.ingress_streams import (  # noqa: E402
    add_arguments,
    configure_server_environment,
    run_open_streams,
)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM and SIGHUP take the same clean-up path as Ctrl-C


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--requests", type=int, default=5000, help="measured requests per target per round")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up requests before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--senders", type=int, default=1, help="also run K concurrent senders against ours")
    parser.add_argument(
        "--pace",
        type=float,
        default=None,
        metavar="REQ_PER_S",
        help="with --senders: also compare K senders and 1 sender each sending at this rate",
    )
    parser.add_argument(
        "--interleave",
        type=int,
        default=0,
        metavar="CHUNK",
        help="within each round, alternate the targets every CHUNK requests (a connection each), so load "
        "drift on a shared machine hits all alike; default 0: one target's requests after the other's",
    )
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the body generator")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write results here")
    add_arguments(parser)
    ingress_acks.add_arguments(parser)
    # Internal: how the script starts the baseline servers in child processes.
    parser.add_argument("--serve", choices=("floor", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests < 100 or args.rounds < 1 or args.warmup < 0 or args.senders < 1 or args.interleave < 0:
        parser.error(
            "need --requests >= 100, --rounds >= 1, --warmup >= 0, --senders >= 1, --interleave >= 0"
        )
    ingress_acks.check_arguments(args, parser)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve_baseline(args.serve, args.port, args.redis_url)
        return 0
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    configure_server_environment(args)
    try:
        with stack(args) as bench:
            results = run_benchmark(args, bench)
            if args.open_streams:
                results["open_streams"] = run_open_streams(args, bench)
    except KeyboardInterrupt:
        print("\ninterrupted; servers and redis-server stopped", file=sys.stderr)
        return 130
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0  # a benchmark: the verdicts above are information, not a failure


if __name__ == "__main__":
    sys.exit(main())
