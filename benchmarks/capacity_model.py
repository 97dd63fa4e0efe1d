"""The capacity model's arithmetic: readings taken at the two ends of a measurement window, what one unit
of work (a trigger, a payload event, a delivered event) costs Redis and our processes, and how many GMS
nodes one Redis primary carries. Pure functions over numbers, so the model can be redrawn from JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Redis is single-threaded where it matters: commands, scripts and client I/O run on its main thread
# (no io-threads), so "one Redis core" is one second of main-thread CPU per second.
REDIS_CORE_US_PER_S = 1_000_000
# Leave headroom: a primary above ~70% of its core queues commands in bursts, and GMS sees that as
# reply latency (every GMS node waits for each reply before its next push).
HEADROOM = 0.7
NODE_RATES = (100, 500, 1000)  # pushes/s per GMS node the node table is drawn for
_OWN_COMMANDS = ("info",)  # the readings' own commands, not the relay's


@dataclass
class Reading:
    """Cumulative counters at one moment: Redis INFO, the relay's counters hash, our processes' CPU."""

    at: float  # time.monotonic()
    calls: dict[str, int]  # INFO commandstats calls by command (commands inside scripts included)
    net_in: int  # total_net_input_bytes (client traffic)
    net_out: int  # total_net_output_bytes
    repl_out: int  # total_net_repl_output_bytes (0 on Redis 7.0, which counts that in net_out)
    repl_offset: int  # master_repl_offset: bytes of the replication stream (0 with no replica ever)
    reads: int  # total_reads_processed: client socket reads (one per request, or per pipeline)
    cpu_s: float  # used_cpu_sys + used_cpu_user (all of redis-server's threads)
    main_cpu_s: float  # used_cpu_sys_main_thread + used_cpu_user_main_thread
    counters: dict[str, float]  # gms-relay:counters
    process_cpu_s: dict[str, float]  # ingress / worker-N -> CPU seconds (process tree)


def reading_from_info(
    at: float, info: dict[str, Any], counters: dict[str, float], process_cpu_s: dict[str, float]
) -> Reading:
    """A Reading from redis-py's parsed INFO (commandstats, stats and cpu sections merged)."""
    calls = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in info.items()
        if name.startswith("cmdstat_") and isinstance(value, dict)
    }
    return Reading(
        at=at,
        calls=calls,
        net_in=int(info.get("total_net_input_bytes", 0)),
        net_out=int(info.get("total_net_output_bytes", 0)),
        repl_out=int(info.get("total_net_repl_output_bytes", 0)),
        repl_offset=int(info.get("master_repl_offset", 0)),
        reads=int(info.get("total_reads_processed", 0)),
        cpu_s=float(info.get("used_cpu_sys", 0)) + float(info.get("used_cpu_user", 0)),
        main_cpu_s=float(info.get("used_cpu_sys_main_thread", 0))
        + float(info.get("used_cpu_user_main_thread", 0)),
        counters=counters,
        process_cpu_s=process_cpu_s,
    )


@dataclass
class Window:
    """What happened between two readings of one run, and the units of work done in it."""

    variant: str
    seconds: float
    commands: int  # every command Redis executed, those inside scripts included
    scripts: int  # EVALSHA / EVAL calls (one per state change)
    top_commands: dict[str, int]
    net_in: int
    net_out: int
    repl_out: int
    reads: int
    redis_cpu_us: float
    redis_main_cpu_us: float
    ingress_cpu_us: float
    worker_cpu_us: float
    units: dict[str, float] = field(default_factory=dict)  # pushes, triggers, payload_events, ...

    def per(self, unit: str) -> dict[str, float]:
        """Every cost of the window divided by `unit` (0 when the window did none of it)."""
        n = self.units.get(unit, 0.0)
        if n <= 0:
            return {}
        return {
            "commands": self.commands / n,
            "scripts": self.scripts / n,
            "bytes_in": self.net_in / n,
            "bytes_out": self.net_out / n,
            "repl_out": self.repl_out / n,
            "reads": self.reads / n,
            "redis_cpu_us": self.redis_cpu_us / n,
            "redis_main_cpu_us": self.redis_main_cpu_us / n,
            "ingress_cpu_us": self.ingress_cpu_us / n,
            "worker_cpu_us": self.worker_cpu_us / n,
        }

    def rate(self, unit: str) -> float:
        return self.units.get(unit, 0.0) / self.seconds if self.seconds else 0.0


def pooled(variant: str, runs: list[Window]) -> Window:
    """Several rounds of one variant as one window: every delta and every unit summed, so each cost is
    the pooled ratio over all rounds (rounds interleaved with the other variants share out whatever
    else the machine was doing)."""
    units: dict[str, float] = {}
    commands: dict[str, int] = {}
    for run in runs:
        for name, value in run.units.items():
            units[name] = units.get(name, 0.0) + value
        for name, n in run.top_commands.items():
            commands[name] = commands.get(name, 0) + n
    return Window(
        variant=variant,
        seconds=sum(r.seconds for r in runs),
        commands=sum(r.commands for r in runs),
        scripts=sum(r.scripts for r in runs),
        top_commands=dict(sorted(commands.items(), key=lambda kv: -kv[1])[:12]),
        net_in=sum(r.net_in for r in runs),
        net_out=sum(r.net_out for r in runs),
        repl_out=sum(r.repl_out for r in runs),
        reads=sum(r.reads for r in runs),
        redis_cpu_us=sum(r.redis_cpu_us for r in runs),
        redis_main_cpu_us=sum(r.redis_main_cpu_us for r in runs),
        ingress_cpu_us=sum(r.ingress_cpu_us for r in runs),
        worker_cpu_us=sum(r.worker_cpu_us for r in runs),
        units=units,
    )


def window(variant: str, start: Reading, end: Reading, units: dict[str, float]) -> Window:
    calls = {
        name: end.calls.get(name, 0) - start.calls.get(name, 0)
        for name in end.calls
        if name not in _OWN_COMMANDS
    }
    calls = {name: n for name, n in calls.items() if n > 0}
    # Bytes to the replica: the replication stream's own length. Redis 7.0 counts it in
    # total_net_output_bytes and leaves total_net_repl_output_bytes at 0: take it out of the clients'
    # bytes then, so "out" is what clients read whichever way the server counts.
    stream = end.repl_offset - start.repl_offset
    separate = end.repl_out - start.repl_out > 0
    cpu = {name: end.process_cpu_s[name] - start.process_cpu_s.get(name, 0.0) for name in end.process_cpu_s}
    return Window(
        variant=variant,
        seconds=end.at - start.at,
        commands=sum(calls.values()),
        scripts=calls.get("evalsha", 0) + calls.get("eval", 0),
        top_commands=dict(sorted(calls.items(), key=lambda kv: -kv[1])[:12]),
        net_in=end.net_in - start.net_in,
        net_out=end.net_out - start.net_out - (0 if separate else stream),
        repl_out=stream,
        reads=end.reads - start.reads,
        redis_cpu_us=(end.cpu_s - start.cpu_s) * 1e6,
        redis_main_cpu_us=(end.main_cpu_s - start.main_cpu_s) * 1e6,
        ingress_cpu_us=sum(v for k, v in cpu.items() if k == "ingress") * 1e6,
        worker_cpu_us=sum(v for k, v in cpu.items() if k.startswith("worker")) * 1e6,
        units=units,
    )


# --- the model ------------------------------------------------------------------------------------------


def _minus(a: dict[str, float], b: dict[str, float], scale: float = 1.0) -> dict[str, float]:
    return {k: a[k] - scale * b.get(k, 0.0) for k in a}


def unit_costs(windows: dict[str, Window]) -> dict[str, dict[str, float]]:
    """Cost of each unit of work, from the runs that isolate it:
    - store a trigger: the ingress-only reliable run, per trigger accepted;
    - deliver an event to the stream: the reliable run minus its triggers' store cost, per event;
    - deliver an event to a webhook sink too: reliable with a sink minus without, per event;
    - store / deliver a payload event: the ingress-only payload run, then the payload run minus that;
    - a reliable trigger and a payload event all in (what a deployment pays), straight from the runs."""
    costs: dict[str, dict[str, float]] = {}
    ingest_r, reliable = windows.get("ingest-reliable"), windows.get("reliable")
    ingest_p, payload = windows.get("ingest-payload"), windows.get("payload")
    if ingest_r:
        costs["store a trigger"] = ingest_r.per("triggers")
    if reliable:
        costs["reliable trigger, all in"] = reliable.per("triggers")
        if ingest_r:
            store = ingest_r.per("triggers")
            share = reliable.units["triggers"] / reliable.units["events"]
            costs["deliver an event to the stream"] = _minus(reliable.per("events"), store, share)
    hooked = windows.get("reliable-webhook")
    if hooked and reliable:
        costs["add a webhook sink, per event"] = _minus(hooked.per("events"), reliable.per("events"))
    if ingest_p:
        costs["store a payload event"] = ingest_p.per("payload_events")
    if payload:
        costs["payload event, all in"] = payload.per("payload_events")
        if ingest_p:
            costs["deliver a payload event"] = _minus(payload.per("events"), ingest_p.per("payload_events"))
    replicated = (("replica attached", "reliable-replica"), ("INGRESS_ACK=replicated", "reliable-replicated"))
    for name, variant in replicated:
        run = windows.get(variant)
        if run and reliable:
            costs[f"reliable trigger, all in, {name}"] = run.per("triggers")
    return {k: v for k, v in costs.items() if v}


def capacity(cost_us: float, headroom: float = HEADROOM) -> float:
    """Units per second one Redis core carries at `headroom` of its main thread."""
    return headroom * REDIS_CORE_US_PER_S / cost_us if cost_us > 0 else float("inf")


# --- tables -------------------------------------------------------------------------------------------------


def _n(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def costs_table(costs: dict[str, dict[str, float]]) -> str:
    """What each unit of work costs the Redis primary."""
    header = (
        "| unit of work | Redis commands (of which scripts) | client reads | bytes in / out "
        "| bytes to the replica | Redis main-thread CPU us |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, c in costs.items():
        lines.append(
            f"| {name} | {_n(c['commands'])} ({_n(c['scripts'])}) | {_n(c['reads'])} "
            f"| {_n(c['bytes_in'])} / {_n(c['bytes_out'])} | {_n(c['repl_out'])} "
            f"| {_n(c['redis_main_cpu_us'])} |"
        )
    return "\n".join(lines)


def processes_table(windows: dict[str, Window]) -> str:
    """What the same work costs our processes: the ingress per push, the workers per delivered event
    and per Refresh (the next bottlenecks once Redis has room)."""
    header = "| run | ingress CPU us per push | worker CPU us per delivered event | per Refresh |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, w in windows.items():
        pushes, events, refreshes = (w.units.get(u, 0.0) for u in ("pushes", "events", "refreshes"))
        cells = [
            f"{w.ingress_cpu_us / pushes:,.0f}" if pushes else "-",
            f"{w.worker_cpu_us / events:,.0f}" if events else "-",
            f"{w.worker_cpu_us / refreshes:,.0f}" if refreshes else "-",
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def capacity_table(windows: dict[str, Window]) -> str:
    """Per workload: pushes/s one primary carries (its main thread at HEADROOM), GMS nodes at each node
    rate, and what that load needs beside Redis: ingress and worker cores and network, all scaled from
    the same run's per-push costs."""
    labels = {
        "reliable": "reliable triggers, stream sink",
        "reliable-webhook": "reliable triggers, stream + 1 webhook sink",
        "payload": "payload pushes, stream sink",
        "payload-webhook": "payload pushes, stream + 1 webhook sink",
        "reliable-replica": "reliable triggers, stream sink, replica attached",
        "reliable-replicated": "reliable triggers, stream sink, INGRESS_ACK=replicated",
    }
    nodes = " | ".join(f"GMS nodes at {r}/s" for r in NODE_RATES)
    header = (
        f"| workload | Redis main-thread us per push | pushes/s per Redis core at {HEADROOM:.0%} "
        f"| events/s then | {nodes} | ingress cores then | worker cores then | Redis network then |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for variant, label in labels.items():
        run = windows.get(variant)
        if run is None or not run.per("pushes"):
            continue
        per = run.per("pushes")
        rate = capacity(per["redis_main_cpu_us"])
        events = rate * run.units.get("events", 0.0) / run.units["pushes"]
        counts = " | ".join(f"{rate / r:,.0f}" for r in NODE_RATES)
        mbytes = rate * (per["bytes_in"] + per["bytes_out"] + per["repl_out"]) / 1e6
        lines.append(
            f"| {label} | {per['redis_main_cpu_us']:.1f} | {rate:,.0f} | {events:,.0f} | {counts} "
            f"| {rate * per['ingress_cpu_us'] / 1e6:.1f} | {rate * per['worker_cpu_us'] / 1e6:.1f} "
            f"| {mbytes:.0f} MB/s |"
        )
    return "\n".join(lines)


def runs_table(windows: dict[str, Window]) -> str:
    header = (
        "| run | seconds | pushes/s | events delivered/s | Refresh/s | Redis main thread busy "
        "| ingress CPU | workers CPU | top commands |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, w in windows.items():
        busy = w.redis_main_cpu_us / 1e6 / w.seconds if w.seconds else 0.0
        top = ", ".join(f"{k} {v / w.seconds:,.0f}/s" for k, v in list(w.top_commands.items())[:5])
        lines.append(
            f"| {name} | {w.seconds:.1f} | {w.rate('pushes'):,.0f} | {w.rate('events'):,.0f} "
            f"| {w.rate('refreshes'):,.0f} | {busy:.0%} | {w.ingress_cpu_us / 1e6 / w.seconds:.0%} "
            f"| {w.worker_cpu_us / 1e6 / w.seconds:.0%} | {top} |"
        )
    return "\n".join(lines)
