"""Soak: steady chat traffic through the real stack; RSS and Redis memory must stay flat.

    python benchmarks/soak.py --duration 600          # the 10-minute soak
    python benchmarks/soak.py --duration 60 --json x  # what CI runs (tests/test_soak.py)

Markers and streams get short TTLs here so that a steady state exists within minutes; with the
defaults the same plateau is reached once CHAT_STATE_TTL_S (ended markers) and STREAM_TTL_S have elapsed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import redis  # noqa: E402

from shared.redis_server import RedisServer  # noqa: E402
from simulator.scenario import ScenarioConfig, run_scenario  # noqa: E402
from simulator.server import ChatServer  # noqa: E402
from tests.processes import relay_env, relay_processes  # noqa: E402

SHORT_TTLS = {"CHAT_STATE_TTL_S": "5", "SESSION_IDLE_TTL_S": "5", "STREAM_TTL_S": "10"}


@dataclass
class Sample:
    at_s: float
    ingress_rss_kib: int
    worker_rss_kib: list[int]
    redis_used_kib: int
    redis_keys: int
    events_delivered: int


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_soak(duration_s: float, rate: float = 100.0, interval_s: float = 5.0) -> list[Sample]:
    """Drive steady traffic for `duration_s`, sampling memory every `interval_s`."""
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp), appendonly=False) as redis_server:
        client = redis.Redis.from_url(redis_server.url)
        with ChatServer() as chat_server:
            env = relay_env(
                REDIS_URL=redis_server.url, GMS_URL=chat_server.base_url, API_TOKEN="soak", **SHORT_TTLS
            )
            with relay_processes(env, workers=2) as relay:
                stop = threading.Event()
                config = ScenarioConfig(
                    chats=20,
                    events_per_chat=15,
                    rate=rate,
                    mode="mixed",
                    resend_delay_s=2.0,
                    api_url=relay.base_url,
                    api_token="soak",
                    forever=True,
                    seed=3,
                    settle_timeout_s=10.0,
                )
                driver = threading.Thread(
                    target=run_scenario,
                    args=(f"{relay.base_url}/push", config),
                    kwargs={"server": chat_server, "stop": stop},
                )
                driver.start()
                started = time.monotonic()
                try:
                    while (elapsed := time.monotonic() - started) < duration_s:
                        assert relay.ingress is not None
                        info = client.info("memory")
                        samples.append(
                            Sample(
                                at_s=round(elapsed, 1),
                                ingress_rss_kib=rss_kib(relay.ingress.process.pid),
                                worker_rss_kib=[rss_kib(w.process.pid) for w in relay.workers],
                                redis_used_kib=int(info["used_memory"]) // 1024,
                                redis_keys=int(client.dbsize()),
                                events_delivered=int(
                                    client.hget("gms-relay:counters", "events_delivered") or 0
                                ),
                            )
                        )
                        time.sleep(interval_s)  # the sampling period
                finally:
                    stop.set()
                    driver.join(60)
        client.close()
    return samples


def growth(samples: list[Sample], value: str) -> tuple[float, float]:
    """Mean of `value` over the second third and over the last third of the run."""

    def pick(s: Sample) -> float:
        got = getattr(s, value)
        return float(sum(got) if isinstance(got, list) else got)

    third = max(1, len(samples) // 3)
    return statistics.mean(map(pick, samples[third : 2 * third])), statistics.mean(
        map(pick, samples[-third:])
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    parser.add_argument("--rate", type=float, default=100.0, help="chat events per second")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    samples = run_soak(args.duration, args.rate, interval_s=5.0 if args.duration > 120 else 3.0)
    print(f"{'t s':>6} {'ingress MiB':>12} {'workers MiB':>12} {'redis MiB':>10} {'keys':>7} {'events':>8}")
    for s in samples:
        print(
            f"{s.at_s:6.0f} {s.ingress_rss_kib / 1024:12.1f} {sum(s.worker_rss_kib) / 1024:12.1f} "
            f"{s.redis_used_kib / 1024:10.2f} {s.redis_keys:7d} {s.events_delivered:8d}"
        )
    for value in ("ingress_rss_kib", "worker_rss_kib", "redis_used_kib", "redis_keys"):
        middle, last = growth(samples, value)
        print(
            f"{value}: middle third {middle:.0f}, last third {last:.0f} ({(last / middle - 1) * 100:+.1f}%)"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in samples], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
