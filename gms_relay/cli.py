"""`gms-relay`: one console script for every process of the relay.

Each subcommand imports its process's code lazily, so the ingress never loads worker code.
"""

from __future__ import annotations

import argparse
import os
import sys

from shared.errors import ConfigError
from shared.settings import Settings, load_settings


def _settings() -> Settings:
    return load_settings(os.environ)


def _ingress(args: argparse.Namespace) -> int:
    from ingress.server import serve

    serve(_settings(), host=args.host, port=args.port, processes=args.processes)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from workers.run import run_worker

    return int(run_worker(_settings(), burst=args.burst, name=args.name))


def _up(args: argparse.Namespace) -> int:
    from gms_relay.stack import run_stack

    return int(run_stack(args))


def _requeue(args: argparse.Namespace) -> int:
    from workers.admin import requeue_failed

    return int(requeue_failed(_settings(), job_ids=args.job_ids, all_jobs=args.all))


def _skip(args: argparse.Namespace) -> int:
    from workers.admin import skip_failed

    return int(skip_failed(_settings(), job_ids=args.job_ids))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gms-relay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ingress = sub.add_parser("ingress", help="serve the HTTP API (POST /push, /sessions, health, metrics)")
    ingress.add_argument("--host", default="0.0.0.0")
    ingress.add_argument("--port", type=int, default=8080)
    ingress.add_argument(
        "--processes", type=int, default=1, help="uvicorn processes sharing the port (one per busy GMS node)"
    )
    ingress.set_defaults(func=_ingress)

    worker = sub.add_parser("worker", help="run one RQ worker on all of the relay's queues")
    worker.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    worker.add_argument("--name", default=None, help="worker name (default: RQ's)")
    worker.set_defaults(func=_worker)

    up = sub.add_parser("up", help="run the whole stack on this machine")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--dashboard-port", type=int, default=9181)
    up.add_argument("--no-dashboard", action="store_true")
    up.add_argument("--simulate", action="store_true", help="also drive the stack with demo chats")
    up.add_argument("--data-dir", default=".gms-relay", help="embedded Redis data directory")
    up.set_defaults(func=_up)

    sub.add_parser("simulate", help="GMS + Chat Server simulator (gms-relay simulate --help)", add_help=False)

    requeue = sub.add_parser("requeue-failed", help="send dead-lettered webhook deliveries again")
    requeue.add_argument("--all", action="store_true")
    requeue.add_argument("job_ids", nargs="*")
    requeue.set_defaults(func=_requeue)

    skip = sub.add_parser(
        "skip-failed", help="drop dead-lettered deliveries, releasing the chats behind them"
    )
    skip.add_argument("job_ids", nargs="+")
    skip.set_defaults(func=_skip)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        # The simulator owns its options; argparse's REMAINDER would swallow them unreliably.
        from simulator.cli import main as simulate_main

        return int(simulate_main(argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"gms-relay: configuration error: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
