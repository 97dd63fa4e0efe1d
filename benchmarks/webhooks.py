"""Trigger-to-webhook latency through a failing receiver: the old retry schedule against the new one.

Both runs in one invocation, on the same machine: the real relay (ingress + 2 worker processes) on a
real Redis, the simulator's Chat API and sequential push sender, and a webhook receiver that fails 20%
of the requests and is down (connection refused) for 5 s in the middle of a 20 s run over 60 chats.

    python benchmarks/webhooks.py [--duration 20] [--outage 5] [--chats 60] [--rate 100] [--json out.json]

For every transcript event: trigger POST sent -> the first webhook delivery carrying it accepted.
p50 / p99 over every event (an event not delivered `--settle` seconds after the traffic stopped counts
as infinitely late), and what was still missing then.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/ingress.py shadows
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402

from shared.redis_server import RedisServer  # noqa: E402
from simulator.receiver import WebhookReceiver  # noqa: E402
from simulator.report import Report  # noqa: E402
from simulator.scenario import ScenarioConfig, run_scenario  # noqa: E402
from simulator.server import ChatServer  # noqa: E402
from tests.processes import relay_env, relay_processes  # noqa: E402

OLD_SCHEDULE = "1,5,15,60,300,900,1800,3600"  # the default before issue 11
NEW_SCHEDULE = ""  # the relay's default (a fast first tier, then the long tail)
SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


@dataclass
class Result:
    schedule: str
    events: int
    delivered: int
    missing_events: int
    missing_ended: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    outage_s: float  # measured: from stopping the receiver until it answers again


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    value = ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]
    return None if math.isinf(value) else round(value, 1)


def run(
    schedule: str, duration_s: float, outage_s: float, chats: int, rate: float, settle_s: float
) -> Result:
    receiver = WebhookReceiver(fail_rate=0.2, seed=7)
    wall_minus_mono = time.time() - time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp), appendonly=False) as redis_server:
        with ChatServer() as chat_server, receiver:
            env = {"REDIS_URL": redis_server.url, "GMS_URL": chat_server.base_url}
            env |= {"WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET}
            if schedule:
                env["WEBHOOK_RETRY_SCHEDULE_S"] = schedule
            with relay_processes(relay_env(**env), workers=2) as relay:
                config = ScenarioConfig(
                    chats=chats,
                    events_per_chat=max(1, int(rate * duration_s / chats)),
                    rate=rate,
                    mode="reliable",
                    flex_secure_key_rate=1.0,
                    resend_delay_s=15.0,
                    settle_timeout_s=10.0,
                    seed=11,
                )
                reports: list[Report] = []
                driver = threading.Thread(
                    target=lambda: reports.append(
                        run_scenario(f"{relay.base_url}/push", config, server=chat_server)
                    )
                )
                started = time.monotonic()
                driver.start()
                time.sleep(max(0.0, (duration_s - outage_s) / 2))  # the outage sits mid-run
                down_at = time.monotonic()
                receiver.stop()
                time.sleep(outage_s)  # the receiver is down (connection refused)
                receiver.start()
                outage = time.monotonic() - down_at
                driver.join()
                traffic_end = max(started + duration_s, time.monotonic())
                report = reports[0]
                wanted = {(c.session_id, int(e["index"])): None for c in report.chats for e in c.transcript}
                ended = {c.session_id for c in report.chats if c.ended}

                def arrivals() -> tuple[dict[tuple[str, int], float], set[str]]:
                    first: dict[tuple[str, int], float] = {}
                    ends: set[str] = set()
                    for delivery in receiver.accepted():
                        payload = delivery.json
                        data = payload["data"]
                        if payload["type"] == "chat.ended":
                            ends.add(data["sessionId"])
                        for event in data.get("events", []):
                            key = (data["sessionId"], int(event["index"]))
                            first.setdefault(key, delivery.received_at - wall_minus_mono)
                    return first, ends

                while time.monotonic() < traffic_end + settle_s:  # the backlog after the traffic
                    first, ends = arrivals()
                    if all(k in first for k in wanted) and ended <= ends:
                        break
                    time.sleep(0.2)
                first, ends = arrivals()
    pushed: dict[tuple[str, int], float] = {}
    for chat in report.chats:
        for record in chat.push_log:
            for index in record.indexes:
                pushed.setdefault((chat.session_id, index), record.at)
    latencies = [
        (first[key] - pushed[key]) * 1000 if key in first else math.inf for key in wanted if key in pushed
    ]
    delivered = [v for v in latencies if not math.isinf(v)]
    return Result(
        schedule=schedule or "default",
        events=len(wanted),
        delivered=sum(1 for k in wanted if k in first),
        missing_events=sum(1 for k in wanted if k not in first),
        missing_ended=len(ended - ends),
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        max_ms=round(max(delivered), 1) if delivered else None,
        outage_s=round(outage, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of traffic (default 20)")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the receiver is down (default 5)")
    parser.add_argument("--chats", type=int, default=60, help="concurrent chats (default 60)")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second (default 100)")
    parser.add_argument(
        "--settle", type=float, default=45.0, help="seconds allowed after the traffic (default 45)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = [
        run(schedule, args.duration, args.outage, args.chats, args.rate, args.settle)
        for schedule in (OLD_SCHEDULE, NEW_SCHEDULE)
    ]
    print("| schedule | events | p50 ms | p99 ms | max ms | missing events | missing chat.ended | outage s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.schedule} | {r.events} | {r.p50_ms} | {r.p99_ms if r.p99_ms is not None else 'inf'} "
            f"| {r.max_ms} | {r.missing_events} | {r.missing_ended} | {r.outage_s} |"
        )
    print(
        "targets (new schedule): nothing missing, p50 <= 100 ms, "
        f"p99 <= outage + 3 s = {(args.outage + 3) * 1000:.0f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
