"""`benchmarks/ingress.py --ack-levels [--ack-sentinel]`: what each INGRESS_ACK level costs per push.

Issue 14 asks for the price of each acknowledgement level, measured in the same run as the rest, so
drift in a shared machine's load cannot pose as a cost. Beside the standalone Redis the other targets
use, a primary with one real replica runs (tests/sentinel_cluster.py: Debian's redis-server, as in CI;
`replicaof` in the replica's config, and the primary's INFO must show the replica online before
anything is measured), with a real ingress per level on it:

  stored-replica       INGRESS_ACK=stored: what attaching a replica alone costs (the replication stream),
  replicated           INGRESS_ACK=replicated: the EVALSHA and `WAIT 1 <REPLICA_ACK_TIMEOUT_MS>` in one
                       write, so the reply waits for the replica's confirmation,
and with `--ack-sentinel` one redis-sentinel monitoring the primary and two ingresses reaching it
through REDIS_SENTINELS, which takes redis-py's pool path instead of the ingress's own link:
  sentinel-stored      INGRESS_ACK=stored through Sentinel (the pool path's own price),
  sentinel-replicated  INGRESS_ACK=replicated through Sentinel (what an HA deployment runs).

They join the floor / naive / ours rounds, alternating every `--interleave` requests (100 unless
given). Every level is compared with "ours" (INGRESS_ACK=stored, no replica: the default deployment)
of the same round; `replicated+fsynced` needs WAITAOF (Redis >= 7.2), which Debian's 7.0 lacks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks.ingress_servers import Server
from benchmarks.ingress_stats import Run, median_run
from tests.sentinel_cluster import Node, SentinelCluster, sentinel_available

ACK_CHUNK = 100  # requests per chunk when --ack-levels comes without --interleave
ONLINE_TIMEOUT_S = 30.0
# The Sentinel must never fail over during a benchmark on a loaded machine: a primary busy for a
# moment is not down. (tests/sentinel_cluster.py's defaults are tuned for fast failover tests.)
DOWN_AFTER_MS = 60_000
FAILOVER_TIMEOUT_MS = 180_000


@dataclass(frozen=True)
class Level:
    """One ingress configuration measured on the primary with a replica."""

    name: str
    label: str
    ack: str  # INGRESS_ACK
    sentinel: bool  # through REDIS_SENTINELS (redis-py's pool path), else REDIS_URL (the own link)


LEVELS = (
    Level("stored-replica", "stored, replica on", "stored", False),
    Level("replicated", "replicated (WAIT 1)", "replicated", False),
    Level("sentinel-stored", "stored via Sentinel", "stored", True),
    Level("sentinel-replicated", "replicated via Sentinel", "replicated", True),
)
LABELS = {level.name: level.label for level in LEVELS}
REFERENCE_LABEL = "ours stored, no replica"
# What each level is compared with to isolate the WAIT itself: the same path at INGRESS_ACK=stored.
SAME_PATH_STORED = {"replicated": "stored-replica", "sentinel-replicated": "sentinel-stored"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ack-levels",
        action="store_true",
        help="also measure ours at INGRESS_ACK=stored and =replicated on a primary with one replica, in "
        "the same interleaved rounds, against ours stored without a replica",
    )
    parser.add_argument(
        "--ack-sentinel",
        action="store_true",
        help="with --ack-levels (implied): also both levels through one Sentinel (REDIS_SENTINELS)",
    )


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--ack-sentinel implies --ack-levels; the levels are only comparable interleaved, so they get a
    chunk when none was asked for; the replica needs Debian's binaries (as CI has)."""
    args.ack_levels = args.ack_levels or args.ack_sentinel
    if not args.ack_levels:
        return
    if not sentinel_available():
        parser.error(
            "--ack-levels runs Debian's redis-server and redis-sentinel (the replica's and Sentinel's): "
            "apt-get install redis-server redis-sentinel, and run with /usr/bin first on PATH"
        )
    if not args.interleave:
        args.interleave = ACK_CHUNK


def levels(args: argparse.Namespace) -> list[Level]:
    return [level for level in LEVELS if args.ack_sentinel or not level.sentinel]


@dataclass
class AckSetup:
    """The ingresses of the levels, and the primary's client (their probes read its CPU)."""

    servers: dict[str, Server]
    primary: redis.Redis


@contextmanager
def ack_servers(args: argparse.Namespace, work_dir: Path) -> Iterator[AckSetup]:
    """A primary, its replica (online before this yields), one Sentinel with --ack-sentinel, and an
    ingress per level (not yet waited for); all stopped on the way out."""
    cluster = SentinelCluster(
        work_dir / "ack-cluster",
        sentinels=1 if args.ack_sentinel else 0,
        replicas=1,
        down_after_ms=DOWN_AFTER_MS,
        failover_timeout_ms=FAILOVER_TIMEOUT_MS,
        redis_config=("appendonly no",),  # as the standalone Redis (RedisServer(appendonly=False))
    )
    servers: dict[str, Server] = {}
    primary: redis.Redis | None = None
    try:
        cluster.start()
        primary = cluster.nodes[0].client()
        wait_replica_online(cluster.nodes[0], primary)
        for level in levels(args):
            env = {"INGRESS_ACK": level.ack}
            if level.sentinel:
                env.update(cluster.env(db=0))  # REDIS_URL then names no node: only its db applies
            url = env.get("REDIS_URL", cluster.nodes[0].url)
            servers[level.name] = Server("ours", url, work_dir, name=level.name, env=env)
        yield AckSetup(servers, primary)
    finally:
        for server in servers.values():
            server.stop()
        if primary is not None:
            primary.close()
        cluster.stop()


def wait_replica_online(node: Node, primary: redis.Redis) -> None:
    """The primary's INFO replication lists the replica `online`, and a WAIT 1 is confirmed: only then
    does INGRESS_ACK=replicated measure a confirmation rather than its timeout."""
    deadline = time.monotonic() + ONLINE_TIMEOUT_S
    while True:
        info = primary.info("replication")
        replica = info.get("slave0")
        if isinstance(replica, dict) and replica.get("state") == "online":
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replica of the primary on port {node.port} is not online: {info}")
        time.sleep(0.05)
    primary.set("ack-check", 1)
    confirmed = primary.wait(1, 1000)
    primary.delete("ack-check")
    if confirmed < 1:
        raise RuntimeError(f"the replica is online but confirmed no write within 1 s (WAIT said {confirmed})")


def report_ack_levels(
    args: argparse.Namespace,
    ours: list[Run],
    per_level: dict[str, list[Run]],
    standalone: redis.Redis,
    primary: redis.Redis,
) -> dict[str, Any]:
    """Per level: medians of the rounds, and its p50 / p99 over ours stored of the same round."""
    version = str(primary.info("server")["redis_version"])
    alone_version = str(standalone.info("server")["redis_version"])
    replication = primary.info("replication")
    timeout_ms = int(os.environ.get("REPLICA_ACK_TIMEOUT_MS", "50"))
    reference = median_run(ours)
    print()
    print(
        f"acknowledgement levels, in the same interleaved rounds (every {args.interleave} requests): ours "
        f"on a primary with one replica (Redis {version}), REPLICA_ACK_TIMEOUT_MS {timeout_ms}; ratios to "
        f"{REFERENCE_LABEL} (Redis {alone_version}) of the same round, median of {args.rounds} rounds"
    )
    if version != alone_version:
        print(
            f"WARNING: the standalone Redis is {alone_version}, the primary {version}: run with "
            "PATH=/usr/bin:/bin so both are Debian's, or the ratios compare two Redis versions"
        )
    print(
        f"{'level':<24} {'p50 us':>8} {'p99 us':>8} {'p50 ratio':>10} {'(rounds)':>11} {'p99 ratio':>10}"
        f" {'p50 +us':>8} {'server CPU us':>14} {'redis CPU us':>13}"
    )
    _row(REFERENCE_LABEL, reference, 1.0, (1.0, 1.0), 1.0, 0.0)
    results: dict[str, Any] = {
        "redis_version": version,
        "standalone_redis_version": alone_version,
        "replica_ack_timeout_ms": timeout_ms,
        "chunk": args.interleave,
        "reference": {"label": REFERENCE_LABEL, "median": reference},
        "levels": {},
    }
    medians = {name: median_run(runs) for name, runs in per_level.items()}
    for level in LEVELS:
        runs = per_level.get(level.name)
        if not runs:
            continue
        p50_ratios = [r.p50_us / o.p50_us for r, o in zip(runs, ours, strict=True)]
        p99_ratios = [r.p99_us / o.p99_us for r, o in zip(runs, ours, strict=True)]
        extra_us = statistics.median(r.p50_us - o.p50_us for r, o in zip(runs, ours, strict=True))
        p50_ratio, p99_ratio = statistics.median(p50_ratios), statistics.median(p99_ratios)
        spread = (min(p50_ratios), max(p50_ratios))
        _row(level.label, medians[level.name], p50_ratio, spread, p99_ratio, extra_us)
        results["levels"][level.name] = {
            "label": level.label,
            "ingress_ack": level.ack,
            "via": "REDIS_SENTINELS (redis-py pool)" if level.sentinel else "REDIS_URL (own link)",
            "median": medians[level.name],
            "p50_over_ours_stored": {"median": p50_ratio, "per_round": p50_ratios},
            "p99_over_ours_stored": {"median": p99_ratio, "per_round": p99_ratios},
            "p50_extra_us": extra_us,
            "non_200": sum(r.non_200 for r in runs),
            "rounds": [asdict(r) for r in runs],
        }
    for name, stored in SAME_PATH_STORED.items():
        if name in per_level and stored in per_level:
            wait = [r.p50_us / s.p50_us for r, s in zip(per_level[name], per_level[stored], strict=True)]
            extra = statistics.median(
                r.p50_us - s.p50_us for r, s in zip(per_level[name], per_level[stored], strict=True)
            )
            results["levels"][name]["p50_over_same_path_stored"] = statistics.median(wait)
            print(
                f"WAIT 1 itself: {LABELS[name]} / {LABELS[stored]} p50 = {statistics.median(wait):.2f} "
                f"({extra:+.0f} us a push)"
            )
    lag = replication.get("slave0", {})
    print(f"replica at the end: {lag if isinstance(lag, dict) else 'missing!'}")
    bad = {n: v["non_200"] for n, v in results["levels"].items() if v["non_200"]}
    if bad:
        replies = {n: per_level[n][-1].replies for n in bad}
        print(f"WARNING: non-200 replies (e.g. 503 not_replicated: WAIT timed out): {bad}; {replies}")
    return results


def _row(
    label: str,
    m: dict[str, float],
    p50_ratio: float,
    spread: tuple[float, float],
    p99_ratio: float,
    extra: float,
) -> None:
    """One line of the levels' table (the reference's too, at 1.00 and +0)."""
    cpu = " ".join(
        f"{m[name]:{width}.1f}" if name in m else f"{'-':>{width}}"
        for name, width in (("server_cpu_us", 14), ("redis_cpu_us", 13))
    )
    rounds = f"{spread[0]:.2f}-{spread[1]:.2f}"
    print(
        f"{label:<24} {m['p50_us']:8.1f} {m['p99_us']:8.1f} {p50_ratio:10.2f} {rounds:>11} {p99_ratio:10.2f}"
        f" {extra:+8.0f} {cpu}"
    )
