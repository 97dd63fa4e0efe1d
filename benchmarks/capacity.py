"""Capacity model from measurements: what one trigger, one payload event and one delivered event cost the
Redis primary (commands, bytes, main-thread CPU), so that an operator can tell how many GMS nodes one
primary carries, and what the ingress and the workers need beside it (docs/benchmarks.md, "Capacity").

Each variant is its own run on the real stack (benchmarks/pipeline.py's parts: a fresh redis-server
with its append-only file on, `gms-relay ingress` and `gms-relay worker` processes from
tests/processes.py, the simulator's Chat API, the webhook receiver process of benchmarks/systems.py).
Reliable triggers come from benchmarks/load.py's GMS (sender processes, duplicates, resends), payload
pushes from simulator scenarios in processes of their own (benchmarks/capacity_load.py), both with 2
concurrent chats per offered event/s. After a warm-up, Redis INFO (commandstats, stats, cpu,
replication), the relay's counters and our processes' CPU are read at both ends of a measurement
window; the differences, divided by the work done in the window (pushes answered 200, events that
reached the stream, Refresh calls), are the unit costs (benchmarks/capacity_model.py). Variants:

  idle                 the stack with nothing to do: the background (worker watchers, RQ heartbeats)
  ingest-reliable      reliable triggers, ingress only (no workers): what storing a trigger costs
  reliable             reliable triggers, 2 workers, stream sink
  reliable-webhook     the same with a webhook sink (a separate receiver process)
  ingest-payload       payload pushes, ingress only: what storing payload events costs
  payload              payload pushes, 2 workers, stream sink
  reliable-replica     reliable, with a replica attached (the primary streams every write to it)
  reliable-replicated  reliable, replica attached, INGRESS_ACK=replicated (WAIT 1 after each push)

The variants run interleaved, `--rounds` times, and each is pooled over its rounds.

    python benchmarks/capacity.py [--runs idle,ingest-reliable,...] [--rate 800] [--rounds 3]
                                  [--window 10] [--json out.json] | --from-json out.json

Redis CPU per unit is measured at `--rate`, not at saturation: Redis serves more requests per wake-up
and Refreshes cover more triggers as load rises, so the figures (and the capacity drawn from them) err
on the safe side.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
# As in benchmarks/pipeline.py: this folder must not shadow the `ingress` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Any, Literal  # noqa: E402

import httpx  # noqa: E402
import redis  # noqa: E402

from benchmarks.capacity_load import Acked, PayloadLoad, ReliableLoad  # noqa: E402
from benchmarks.capacity_model import (  # noqa: E402
    Reading,
    Window,
    capacity_table,
    costs_table,
    pooled,
    processes_table,
    reading_from_info,
    runs_table,
    unit_costs,
    window,
)
from benchmarks.measure import COUNTERS, cpu_s, machine, process_tree  # noqa: E402
from benchmarks.systems import webhook_receiver  # noqa: E402
from shared.redis_server import RedisServer  # noqa: E402
from simulator.server import ChatServer  # noqa: E402
from tests.processes import RelayProcesses, relay_env, relay_processes, wait_for  # noqa: E402

Mode = Literal["none", "reliable", "payload"]


@dataclass(frozen=True)
class Variant:
    mode: Mode
    workers: int = 2
    webhook: bool = False
    replica: bool = False
    ack: str = ""  # INGRESS_ACK; "": the relay's default


VARIANTS = {
    "idle": Variant("none"),
    "ingest-reliable": Variant("reliable", workers=0),
    "reliable": Variant("reliable"),
    "reliable-webhook": Variant("reliable", webhook=True),
    "ingest-payload": Variant("payload", workers=0),
    "payload": Variant("payload"),
    "reliable-replica": Variant("reliable", replica=True),
    "reliable-replicated": Variant("reliable", replica=True, ack="replicated"),
}
DEFAULT_RUNS = (
    "idle",
    "ingest-reliable",
    "reliable",
    "reliable-webhook",
    "ingest-payload",
    "payload",
    "reliable-replica",
    "reliable-replicated",
)


def read(client: redis.Redis, relay: RelayProcesses) -> Reading:
    """INFO and the counters in one round trip, then the processes' CPU; time taken in between."""
    pipe = client.pipeline(transaction=False)
    pipe.info("commandstats")
    pipe.info("stats")
    pipe.info("cpu")
    pipe.info("replication")
    pipe.hgetall(COUNTERS)
    commandstats, stats, cpu, replication, counters = pipe.execute()
    at = time.monotonic()
    pids = {f"worker-{i}": w.process.pid for i, w in enumerate(relay.workers)}
    if relay.ingress is not None:
        pids["ingress"] = relay.ingress.process.pid
    process_cpu = {name: sum(cpu_s(p) for p in process_tree(pid)) for name, pid in pids.items()}
    values = {_text(k): float(v) for k, v in counters.items()}
    return reading_from_info(at, {**commandstats, **stats, **cpu, **replication}, values, process_cpu)


def units(acked: list[Acked], start: Reading, end: Reading, refresh_at: list[float]) -> dict[str, float]:
    """The work done between two readings: pushes answered 200 (by the sender's clock: its POST leaves
    just before the ingress's one Redis call), events that reached the stream and webhook deliveries
    (the relay's counters, bumped in the commit's own Lua call), Refresh calls (the Chat API's log)."""

    def delta(name: str) -> float:
        return end.counters.get(name, 0.0) - start.counters.get(name, 0.0)

    inside = [(kind, n) for at, kind, n in acked if start.at <= at < end.at]
    return {
        "pushes": float(len(inside)),
        "triggers": float(sum(1 for kind, _ in inside if kind == "trigger")),
        "payload_pushes": float(sum(1 for kind, _ in inside if kind == "payload")),
        "payload_events": float(sum(n for kind, n in inside if kind == "payload")),
        "events": delta("events_delivered"),
        "webhook_deliveries": delta("webhook_delivered"),
        "refreshes": float(sum(1 for at in refresh_at if start.at <= at < end.at)),
    }


def start_replica(tmp: Path, primary: RedisServer) -> RedisServer:
    replica = RedisServer(tmp / "replica", appendonly=True)
    replica.start()
    client = redis.Redis(port=replica.port)
    client.replicaof("127.0.0.1", primary.port)
    wait_for(lambda: client.info("replication").get("master_link_status") == "up", timeout_s=20)
    client.close()
    return replica


def run_variant(name: str, rate: float, warmup_s: float, window_s: float) -> tuple[Window, list[str]]:
    """One variant on a fresh stack; returns its measurement window and notes."""
    variant = VARIANTS[name]
    notes: list[str] = []
    acked: list[Acked] = []
    with tempfile.TemporaryDirectory(prefix="gms-capacity-") as tmp:
        primary = RedisServer(Path(tmp) / "primary", appendonly=True)
        primary.start()
        replica = start_replica(Path(tmp), primary) if variant.replica else None
        client = redis.Redis.from_url(primary.url)
        chat_server = ChatServer()
        chat_server.start()
        try:
            with webhook_receiver(variant.webhook) as (hook_url, _received, hook_stop):
                env = {"REDIS_URL": primary.url, "GMS_URL": chat_server.base_url, "ALLOW_OPEN_PUSH": "true"}
                env["LOG_LEVEL"] = "ERROR"  # not the payload gap skips: the customer join is never pushed
                if hook_url:
                    env["WEBHOOK_URL"] = hook_url
                if variant.ack:
                    env |= {"INGRESS_ACK": variant.ack}
                with relay_processes(relay_env(**env), workers=variant.workers) as relay:
                    wait_for(lambda: client.scard("rq:workers") >= variant.workers, timeout_s=30)
                    load: ReliableLoad | PayloadLoad | None = None
                    if variant.mode == "reliable":
                        run_s = warmup_s + window_s + 1.0
                        store_only = not variant.workers
                        load = ReliableLoad(chat_server, relay.port, rate, run_s, store_only)
                    elif variant.mode == "payload":
                        load = PayloadLoad(f"{relay.base_url}/push", rate)
                    if load is not None:
                        load.start()
                    time.sleep(warmup_s)  # the benchmark's warm-up: chats opened, connections warm
                    start = read(client, relay)
                    time.sleep(window_s)  # the measurement window
                    end = read(client, relay)
                    if load is not None:
                        acked = load.stop()
                    hook_stop()
                    rejected = int(relay_pushes_rejected(relay.base_url))
        finally:
            chat_server.stop()
            client.close()
            if replica is not None:
                replica.stop()
            primary.stop()
    found = units(acked, start, end, [r.at for r in chat_server.log.records()])
    if variant.mode != "none" and not found["pushes"]:
        notes.append("no push was answered 200 in the window")
    if rejected:
        notes.append(f"{rejected} pushes not answered 200 over the run")
    return window(name, start, end, found), notes


def relay_pushes_rejected(base_url: str) -> float:
    """Pushes the ingress answered with an error code (its /metrics), over the whole run."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gms_relay_pushes_total{") and 'outcome="' in line:
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            if outcome not in {"queued", "duplicate", "late", "covered", "ended", "wakeup"}:
                total += float(line.rsplit(" ", 1)[1])
    return total


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    choices = ", ".join(VARIANTS)
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS), help=f"comma-separated: {choices}")
    parser.add_argument("--rate", default="800", help="offered transcript events/s, comma-separated")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=10.0, help="measurement window, seconds")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the variants interleaved in each")
    parser.add_argument("--json", type=Path, help="write the readings and the model here")
    parser.add_argument("--from-json", type=Path, help="only redraw the tables from an earlier --json")
    args = parser.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    args.rate = [float(r) for r in args.rate.split(",") if r.strip()]
    unknown = [r for r in args.runs if r not in VARIANTS]
    if unknown:
        parser.error(f"--runs: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


def by_rate(windows: dict[str, Window]) -> dict[float, dict[str, Window]]:
    """Windows keyed "variant @rate #round", pooled over rounds and grouped by rate."""
    groups: dict[float, dict[str, list[Window]]] = {}
    for key, w in windows.items():
        variant, _, rest = key.partition(" @")
        rate = float(rest.partition(" #")[0])
        groups.setdefault(rate, {}).setdefault(variant, []).append(w)
    return {
        rate: {variant: pooled(f"{variant} @{rate:.0f}", runs) for variant, runs in group.items()}
        for rate, group in sorted(groups.items())
    }


def report(windows: dict[str, Window]) -> str:
    groups = by_rate(windows)
    every = {w.variant: w for group in groups.values() for w in group.values()}
    parts = [runs_table(every), processes_table(every)]
    for rate, group in groups.items():
        parts.append(f"offered {rate:.0f} events/s:\n\n{costs_table(unit_costs(group))}")
        parts.append(capacity_table(group))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        earlier = json.loads(args.from_json.read_text())
        print(report({w["variant"]: Window(**w) for w in earlier["windows"]}))
        return 0
    sys.setswitchinterval(0.001)  # this process is GMS: hand the GIL over quickly (as pipeline.py)
    windows: dict[str, Window] = {}
    notes: dict[str, list[str]] = {}
    for round_ in range(args.rounds):
        for rate, name in ((r, n) for r in args.rate for n in args.runs):
            key = f"{name} @{rate:.0f} #{round_ + 1}"
            print(f"-- {key} ...", file=sys.stderr)
            windows[key], notes[key] = run_variant(name, rate, args.warmup, args.window)
            windows[key].variant = key
            for note in notes[key]:
                print(f"   note: {note}", file=sys.stderr)
            if args.json:  # after every run: a long invocation interrupted keeps what it measured
                write_json(args.json, windows, notes, args.window)
    print(report(windows))
    return 0


def write_json(path: Path, windows: dict[str, Window], notes: dict[str, list[str]], window_s: float) -> None:
    document: dict[str, Any] = {
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "window_s": window_s,
        "windows": [asdict(w) for w in windows.values()],
        "notes": notes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


if __name__ == "__main__":
    sys.exit(main())
