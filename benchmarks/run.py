"""One run: a fresh Redis, Chat API, system under test and GMS for one system, worker count and
workload; sends, measures, drains and hands the readings to benchmarks/analysis.py."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks.analysis import RunResult, analyse
from benchmarks.load import Gms
from benchmarks.measure import (
    COUNTERS,
    Sampler,
    census,
    chat_devices,
    cpu_s,
    delete_streams,
    machine_cpu,
    memory_info,
    noise_census,
    process_tree,
    read_streams,
    rq_job_stats,
)
from benchmarks.systems import Naive, Ours, System, start_profilers, webhook_receiver
from benchmarks.workload import Workload
from shared.redis_server import RedisServer
from simulator.server import ChatServer


def run_once(
    system_name: str,
    workers: int,
    workload: Workload,
    profile_dir: Path | None = None,
    profile_format: str = "flamegraph",
) -> RunResult:
    """One system, one worker count, one workload: a fresh Redis, Chat API and relay for each run."""
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gms-bench-") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis", appendonly=False)
        redis_server.start()
        client = redis.Redis.from_url(redis_server.url)
        faults = workload.faults(system_name)
        if system_name != "ours" and workload.require_alias:
            notes.append("naive sends no alias: the Chat API accepts any alias for it")
        chat_server = ChatServer(faults=faults)
        chat_server.start()
        gms: Gms | None = None
        system: System | None = None
        profilers: list[subprocess.Popen[bytes]] = []
        try:
            with webhook_receiver(workload.webhook and system_name == "ours") as (
                hook_url,
                hooked,
                hook_stop,
            ):
                cls = Ours if system_name == "ours" else Naive
                system = cls(redis_server.url, chat_server.base_url, workers, hook_url, workload.marker_ttl_s)
                system.start()
                time.sleep(1.0)  # workers connect and register
                snapshots = {"baseline": memory_info(client)}
                baseline = snapshots["baseline"]["used_memory"]
                pids = system.pids()
                assert redis_server.process is not None
                sampler = Sampler(pids)
                sampler.start()
                gms = Gms(chat_server, system.port, workload)
                watched = {**pids, "redis": redis_server.process.pid}
                watched |= {f"sender-{i}": pid for i, pid in enumerate(gms.sender_pids())}

                def cpu_now() -> dict[str, float]:
                    now = {name: sum(cpu_s(p) for p in process_tree(pid)) for name, pid in watched.items()}
                    times = os.times()
                    now["gms (chat api + driver)"] = times.user + times.system
                    now["machine busy"], now["machine cpu stall"] = machine_cpu()
                    return now

                gms.wait_ready()
                started = time.monotonic()
                wall_started = time.time()
                window_start = wall_started + workload.warmup_s
                stop_at = started + workload.duration_s
                cpu_start: dict[str, float] = {}

                def mark_window() -> None:
                    cpu_start.update(cpu_now())
                    if profile_dir is not None:
                        profilers.extend(
                            start_profilers(profile_dir, system_name, workers, pids, workload, profile_format)
                        )

                timer = threading.Timer(workload.warmup_s, mark_window)
                timer.start()
                gms.drive(stop_at)
                window_end = time.time()
                timer.cancel()
                cpu_end = cpu_now()
                snapshots["window_end"] = memory_info(client)
                window_memory = snapshots["window_end"]["used_memory"]
                window_census = census(client, sample=300)
                gms.close_all()
                expected = gms.expected_events

                def settled() -> bool:
                    assert gms is not None and system is not None
                    if not gms.idle() or not system.finished(client, expected):
                        return False
                    return not hook_url or hooked() >= expected

                drain_started = time.monotonic()
                drained = _wait(settled, workload.drain_timeout_s)
                drain_s = time.monotonic() - drain_started
                if not drained:
                    notes.append(f"backlog not drained within {workload.drain_timeout_s:.0f} s")
                rq_jobs = rq_job_stats(client)
                rss_end = sampler.sample()
                sampler.stopping.set()
                gms_stats = gms.stats
                records = gms.stop()
                gms = None
                hook_first: dict[tuple[str, int], float] = hook_stop()
                for profiler in profilers:
                    profiler.wait(60)
                profilers = []
                first, repeats = read_streams(client, chat_devices(chat_server))
                time.sleep(0.5)
                snapshots["after_end"] = memory_info(client)
                after = snapshots["after_end"]["used_memory"]
                after_census = census(client)
                counters = {_text(k): float(v) for k, v in client.hgetall(COUNTERS).items()}
                ended_at = time.monotonic()
                delete_streams(client)
                snapshots["after_end_without_streams"] = memory_info(client)
                after_without_streams = snapshots["after_end_without_streams"]["used_memory"]
                expired: dict[str, Any] = {}
                if workload.marker_ttl_s and system_name == "ours":
                    # Wait out the markers' TTLs, then give Redis's active expiry a moment.
                    time.sleep(max(0.0, ended_at + workload.marker_ttl_s + 3.0 - time.monotonic()))
                    snapshots["after_markers_expired"] = memory_info(client)
                    expired = {
                        "delta_bytes": snapshots["after_markers_expired"]["used_memory"] - baseline,
                        "census": census(client),
                    }
                stats_chats = len(chat_server.store.chat_ids())
                noise_counts = noise_census(chat_server)
        finally:
            for profiler in profilers:
                profiler.kill()
            if gms is not None:
                gms.kill()
            if system is not None:
                system.stop()
            chat_server.stop()
            client.close()
            redis_server.stop()
    refresh_records = chat_server.log.records()
    refreshes = {str(k): n for k, n in Counter(r.outcome for r in refresh_records).items()}
    noise_counts["late_pushes"] = sum(1 for r in records if r[10])
    return analyse(
        system_name=system_name,
        workers=workers,
        workload=workload,
        window=(window_start, window_end),
        records=records,
        stream_first=first,
        stream_repeats=repeats,
        hook_first=hook_first if hook_url else None,
        expected=expected,
        gms_stats=gms_stats,
        refreshes=dict(refreshes),
        refresh_records=refresh_records,
        noise_counts=noise_counts,
        require_alias=faults.require_alias,
        redis_info={
            "baseline_bytes": baseline,
            "active_chats": workload.chats,
            "window_end_bytes": window_memory,
            "per_active_chat_bytes": round((window_memory - baseline) / workload.chats),
            "census_window_end": window_census,
            "after_end_bytes": after,
            "after_end_delta_bytes": after - baseline,
            "after_end_without_streams_delta_bytes": after_without_streams - baseline,
            "census_after_end": after_census,
            "after_markers_expired": expired,
            "info": snapshots,
            "chats_total": stats_chats,
        },
        rss={name: {"peak": sampler.peak.get(name, 0), "end": rss_end.get(name, 0)} for name in sorted(pids)},
        cpu={name: round(cpu_end[name] - cpu_start.get(name, cpu_end[name]), 2) for name in cpu_end},
        counters=counters,
        rq_jobs=rq_jobs,
        drained=drained,
        drain_s=drain_s,
        notes=notes,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
