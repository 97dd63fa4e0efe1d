"""`gms-relay`: one console script for every process of the relay.

Each subcommand imports its process's code lazily, so the ingress never loads worker code.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from shared.errors import ConfigError
from shared.settings import Settings, load_settings


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except where the help says it in words (an unset
    default) and on flags (off unless given). simulator/cli.py has the same one: the simulator is a
    program of its own and does not import the entry points."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        unstated = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if unstated or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _version() -> str:
    try:
        return version("gms-push-relay")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _settings() -> Settings:
    return load_settings(os.environ)


def _ingress(args: argparse.Namespace) -> int:
    from gms_relay.ports import bind_problem

    settings = _settings()
    why = bind_problem(args.host, args.port)
    if why:
        print(
            f"gms-relay: cannot listen on {args.host}:{args.port}: {why}; choose another port with --port",
            file=sys.stderr,
        )
        return 2
    from ingress.server import serve

    serve(settings, host=args.host, port=args.port, processes=args.processes)
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
    parser = argparse.ArgumentParser(
        prog="gms-relay",
        description="The relay's processes, the whole stack on one machine, the GMS simulator, and the "
        "dead-letter tools. `gms-relay COMMAND --help` tells each one's options.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, add_help: bool = True) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help, description=help, formatter_class=HelpFormatter, add_help=add_help
        )

    ingress = command("ingress", "serve the HTTP API (POST /push, /sessions, health, metrics)")
    ingress.add_argument("--host", default="0.0.0.0", help="address to listen on")
    ingress.add_argument("--port", type=int, default=8080, help="port to listen on")
    ingress.add_argument(
        "--processes", type=int, default=1, help="uvicorn processes sharing the port (one per busy GMS node)"
    )
    ingress.set_defaults(func=_ingress)

    worker = command("worker", "run one RQ worker on all of the relay's queues")
    worker.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    worker.add_argument("--name", default=None, help="worker name (default: RQ's, unique per process)")
    worker.set_defaults(func=_worker)

    up = command("up", "run the whole stack on this machine (embedded Redis unless REDIS_URL is set)")
    up.add_argument("--workers", type=int, default=2, help="worker processes")
    up.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the ingress listens on; 0.0.0.0 (every interface) lets a GMS on another machine "
        "push, and is warned about",
    )
    up.add_argument("--port", type=int, default=8080, help="port of the ingress (POST /push)")
    up.add_argument("--dashboard-port", type=int, default=9181, help="port of rq-dashboard (on 127.0.0.1)")
    up.add_argument("--no-dashboard", action="store_true", help="do not start rq-dashboard")
    up.add_argument(
        "--simulate",
        action="store_true",
        help="also run the GMS simulator pushing demo chats (it is GMS_URL) and a demo webhook receiver",
    )
    up.add_argument(
        "--data-dir",
        default=".gms-relay",
        help="where the embedded Redis keeps its data and append-only file (<dir>/redis) and every "
        "process its log (<dir>/logs)",
    )
    up.add_argument(
        "--status-interval",
        type=float,
        default=5.0,
        help="seconds between status lines (pushes, events delivered, backlog, dead letters); 0: none",
    )
    up.set_defaults(func=_up)

    # Parsed by the simulator itself (main() hands it the rest of the command line).
    simulate = command("simulate", "GMS + Chat Server simulator (gms-relay simulate --help)", add_help=False)
    simulate.add_argument("rest", nargs=argparse.REMAINDER, help="the simulator's options")

    requeue = command("requeue-failed", "send dead-lettered webhook deliveries again")
    requeue.add_argument("--all", action="store_true", help="every dead letter")
    requeue.add_argument("job_ids", nargs="*", help="dead letters to requeue (their job ids)")
    requeue.set_defaults(func=_requeue)

    skip = command("skip-failed", "drop dead-lettered deliveries, releasing the chats behind them")
    skip.add_argument("job_ids", nargs="+", help="dead letters to drop (their job ids)")
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
