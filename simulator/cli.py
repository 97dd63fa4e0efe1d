"""`python -m simulator`: serve the simulated Chat API and push chat traffic at a relay."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType
from urllib.parse import urlencode, urlsplit, urlunsplit

from simulator.chat_api import Faults
from simulator.report import Report
from simulator.scenario import ScenarioConfig, run_scenario
from simulator.server import ChatServer


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except where the help says it in words (an unset
    default, or one read from the environment: a token must not be printed by --help) and on flags."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        unstated = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if unstated or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    # Named after the way operators run it; `python -m simulator` takes the same options.
    p = argparse.ArgumentParser(
        prog="gms-relay simulate",
        description="Serve a simulated GMS Chat API (the relay's GMS_URL) and push chat traffic at a "
        "relay, as GMS and Chat Server do; also `python -m simulator`.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--push-url", default="http://127.0.0.1:8080/push", help="the relay's customhttp URL")
    p.add_argument(
        "--api-url", help="relay base URL for PUT /sessions (default: scheme and host of --push-url)"
    )
    p.add_argument(
        "--api-token", default=os.environ.get("API_TOKEN"), help="bearer token (default: $API_TOKEN)"
    )
    p.add_argument(
        "--push-token",
        # A rotation list (PUSH_TOKEN=new,old) is accepted whole by the relay: send its first, the newest.
        default=os.environ.get("PUSH_TOKEN", "").split(",")[0].strip() or None,
        help="appended to --push-url as ?token= (default: $PUSH_TOKEN, its first entry)",
    )
    p.add_argument(
        "--chat-port", type=int, default=8090, help="port of the Chat API server (the relay's GMS_URL)"
    )
    p.add_argument(
        "--chat-host", default="127.0.0.1", help="address the Chat API server binds (0.0.0.0 in containers)"
    )
    p.add_argument("--service", default="customer-support", help="Chat API v2 service of the chats")
    p.add_argument("--chats", type=int, default=10, help="concurrent chats")
    p.add_argument("--events", type=int, default=20, help="events per chat")
    p.add_argument("--rate", type=float, default=100.0, help="events per second over all chats (0: unpaced)")
    p.add_argument(
        "--mode",
        choices=("reliable", "payload", "wakeup", "mixed"),
        default="mixed",
        help="push mode of the chats (mixed: each in turn)",
    )
    p.add_argument("--resend-delay", type=float, default=15.0, help="seconds (flex-push-resend-delay)")
    p.add_argument("--resend-attempts", type=int, default=3, help="flex-push-resend-attempts")
    p.add_argument(
        "--duplicate-rate", type=float, default=0.0, help="probability of an exact duplicate trigger"
    )
    p.add_argument(
        "--flex-secure-key", type=float, default=0.0, help="share of reliable chats sending secure-key"
    )
    p.add_argument(
        "--app-dbid",
        type=float,
        default=0.0,
        help="share of reliable chats whose triggers carry app-dbid (the alias); always with secure-key",
    )
    p.add_argument(
        "--late-rate",
        type=float,
        default=0.0,
        help="probability a trigger is held back on its way (position and app-dbid read when sent)",
    )
    p.add_argument("--late-delay-ms", type=int, default=200, help="how long a late trigger is held back (ms)")
    p.add_argument(
        "--fail-refresh-503", type=float, default=0.0, help="probability a Refresh answers HTTP 503"
    )
    p.add_argument("--fail-refresh-status1", type=float, default=0.0, help="probability of statusCode 1")
    p.add_argument(
        "--fail-refresh-400", type=float, default=0.0, help="probability the agent disconnects (400)"
    )
    p.add_argument(
        "--refresh-delay-ms", type=int, default=0, help="delay before every Refresh is answered (slow GMS)"
    )
    p.add_argument(
        "--alias-change", type=float, default=0.0, help="probability a Refresh hands out a new alias"
    )
    p.add_argument(
        "--alias-switch",
        type=float,
        default=0.0,
        help="probability per event batch that the alias changes outside any Refresh (app-dbid chats only)",
    )
    p.add_argument(
        "--ahead-rate",
        type=float,
        default=0.0,
        help="probability per event batch that another client of the customer fetches it at once",
    )
    p.add_argument(
        "--no-require-alias",
        dest="require_alias",
        action="store_false",
        help="accept calls with a missing, unknown or stale alias (default: HTTP 400, as GMS routes by it)",
    )
    p.add_argument(
        "--settle", type=float, default=30.0, help="seconds to wait for acknowledgements at the end"
    )
    p.add_argument(
        "--stop-settle",
        type=float,
        default=1.0,
        help="the settle wait once asked to stop (SIGINT/SIGTERM): the summary must come out before a "
        "supervisor's stop timeout; pushes still unacknowledged are reported as unsettled",
    )
    p.add_argument("--seed", type=int, help="random seed, for a repeatable run (default: random)")
    p.add_argument("--forever", action="store_true", help="keep opening chats until interrupted")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    return p


def push_url_with_token(push_url: str, token: str | None) -> str:
    if not token:
        return push_url
    parts = urlsplit(push_url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({"token": token})))


def api_url_from(push_url: str) -> str:
    parts = urlsplit(push_url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def summary(report: Report) -> str:
    t = report.totals
    by_mode: dict[str, int] = {}
    for chat in report.chats:
        by_mode[chat.mode] = by_mode.get(chat.mode, 0) + 1
    modes = ", ".join(f"{n} {m}" for m, n in sorted(by_mode.items()))
    return "\n".join(
        [
            f"chats: {t.chats} ({modes}); events: {t.events} in {report.duration_s:.1f} s",
            f"pushes: sent {t.pushes_sent}, acked (200) {t.pushes_acked}, rejected {t.pushes_rejected}",
            f"reliable: triggers {t.triggers}, resends {t.resends} "
            f"({t.resends_per_1000_triggers:.1f} per 1,000 triggers), duplicates {t.duplicates}, "
            f"late {t.late}, exhausted {t.exhausted}",
            f"chat server: alias switches {t.alias_switches}, "
            f"other-client refreshes {t.other_client_refreshes}",
            f"refreshes: {t.refreshes} (ok {t.refreshes_ok}, with CometD key {t.refreshes_cometd_key}, "
            f"stale alias {t.refreshes_stale_alias}, missing alias {t.refreshes_missing_alias}, "
            f"alias errors {t.refreshes_alias_error}); failed registrations {t.registrations_failed}",
            f"settled: {report.settled}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    faults = Faults(
        fail_refresh_http503=args.fail_refresh_503,
        fail_refresh_status1=args.fail_refresh_status1,
        fail_refresh_http400_end=args.fail_refresh_400,
        refresh_delay_ms=args.refresh_delay_ms,
        alias_change=args.alias_change,
        alias_switch=args.alias_switch,
        ahead_rate=args.ahead_rate,
        require_alias=args.require_alias,
    )
    config = ScenarioConfig(
        chats=args.chats,
        events_per_chat=args.events,
        rate=args.rate,
        mode=args.mode,
        service=args.service,
        resend_delay_s=args.resend_delay,
        resend_attempts=args.resend_attempts,
        duplicate_rate=args.duplicate_rate,
        flex_secure_key_rate=args.flex_secure_key,
        app_dbid_rate=args.app_dbid,
        late_rate=args.late_rate,
        late_delay_ms=args.late_delay_ms,
        api_url=args.api_url or api_url_from(args.push_url),
        api_token=args.api_token,
        forever=args.forever,
        settle_timeout_s=args.settle,
        seed=args.seed,
        faults=faults,
    )
    stop = threading.Event()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        # Stop opening chats and adding events at once; the settle wait that follows is read after
        # the drive loop ends, so shortening it here applies to this run.
        config.settle_timeout_s = min(config.settle_timeout_s, args.stop_settle)
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    previous = (
        {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    )
    try:
        with ChatServer(host=args.chat_host, port=args.chat_port, faults=faults) as server:
            print(f"Chat API on {server.base_url} (the relay's GMS_URL)", file=sys.stderr)
            push_url = push_url_with_token(args.push_url, args.push_token)
            report = run_scenario(push_url, config, server=server, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(report.to_json().decode() if args.json else summary(report), flush=True)
    return 0 if report.settled and report.totals.pushes_rejected == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
