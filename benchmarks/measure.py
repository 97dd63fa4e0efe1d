"""Readings of a run: the processes' RSS and CPU (/proc), the machine, Redis (memory, key census by
kind, RQ job counters, the sink streams) and the Chat API's side of the noise."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis

from simulator.server import ChatServer

STREAM_PREFIX = "gms-relay:events:"
COUNTERS = "gms-relay:counters"
_SAMPLE_S = 0.5
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- /proc helpers ----------------------------------------------------------------------------------


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process, in KiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (RQ's forked work horses)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / _CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, seconds some task waited for a CPU: PSI "some")."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = (sum(values) - values[3] - values[4]) / _CLK_TCK
    stalled = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        stalled = int(some.rpartition("total=")[2]) / 1e6
    return busy, stalled


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (RQ's scheduler process, forked jobs)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rpartition(")")[2].split()[1])
                children[parent].append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


class Sampler(threading.Thread):
    """Peak RSS of the watched processes, every _SAMPLE_S."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(name="sampler", daemon=True)
        self.pids = pids
        self.peak: dict[str, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(_SAMPLE_S):
            self.sample()

    def sample(self) -> dict[str, int]:
        now: dict[str, int] = {}
        for name, pid in self.pids.items():
            value = rss_kb(pid)
            if value is not None:
                now[name] = value
                self.peak[name] = max(self.peak.get(name, 0), value)
        return now


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor()


# --- Redis memory ------------------------------------------------------------------------------------


def key_kind(key: bytes) -> str:
    text = key.decode(errors="replace")
    if text.startswith("gms-relay:"):
        kind = text.split(":", 2)[1]
        return {"events": "streams", "dup": "dedupe markers", "ended": "ended markers"}.get(kind, kind)
    if text.startswith("rq:job:"):
        return "rq jobs"
    if text.startswith("rq:"):
        return "rq other"
    return "other"


def census(client: redis.Redis, sample: int | None = None) -> dict[str, dict[str, float]]:
    """Keys and bytes (MEMORY USAGE) by kind; `sample` keys per kind at most, extrapolated by count."""
    by_kind: dict[str, list[bytes]] = defaultdict(list)
    for key in client.scan_iter(count=1000):
        by_kind[key_kind(key)].append(key)
    result: dict[str, dict[str, float]] = {}
    rng = random.Random(0)
    for kind, found in sorted(by_kind.items()):
        chosen = found if sample is None or len(found) <= sample else rng.sample(found, sample)
        pipe = client.pipeline(transaction=False)
        for key in chosen:
            pipe.memory_usage(key, samples=0)
        sizes = [int(s or 0) for s in pipe.execute()]
        total = sum(sizes) * len(found) / max(len(chosen), 1)
        result[kind] = {"keys": len(found), "bytes": round(total), "bytes_per_key": round(total / len(found))}
    return result


def rq_job_stats(client: redis.Redis) -> dict[str, float]:
    """Jobs the RQ workers ran (their own counters in `rq:worker:<name>`)."""
    totals = {"successful": 0.0, "failed": 0.0, "working_time_s": 0.0}
    for key in client.scan_iter(match="rq:worker:*", count=1000):
        if client.type(key) != b"hash":
            continue
        ok, failed, working = client.hmget(
            key, "successful_job_count", "failed_job_count", "total_working_time"
        )
        totals["successful"] += float(ok or 0)
        totals["failed"] += float(failed or 0)
        totals["working_time_s"] += float(working or 0)
    return totals


_MEMORY_FIELDS = (
    "used_memory",
    "used_memory_dataset",
    "used_memory_overhead",
    "used_memory_scripts",
    "mem_clients_normal",
    "connected_clients",
)


def memory_info(client: redis.Redis) -> dict[str, int]:
    """INFO: total memory, dataset (keys and values), overhead (dicts, client buffers, ...), script
    cache, client buffers and connections; and the number of keys."""
    info: dict[str, Any] = client.info("memory") | client.info("clients")
    return {name: int(info.get(name, 0)) for name in _MEMORY_FIELDS} | {"keys": int(client.dbsize())}


# --- the sink streams and the Chat API ---------------------------------------------------------------


def read_streams(client: redis.Redis, device_ids: list[str]) -> tuple[dict[tuple[str, int], float], int]:
    """First stream time (s) of each (session, index), and how many entries repeated one."""
    first: dict[tuple[str, int], float] = {}
    repeats = 0
    for start in range(0, len(device_ids), 200):
        pipe = client.pipeline(transaction=False)
        for device in device_ids[start : start + 200]:
            pipe.xrange(STREAM_PREFIX + device)
        for entries in pipe.execute():
            for entry_id, entry in entries:
                index = entry.get(b"index")
                if index is None:
                    continue
                key = (entry[b"sessionId"].decode(), int(index))
                at = int(entry_id.split(b"-")[0]) / 1000
                if key in first:
                    repeats += 1
                    first[key] = min(first[key], at)
                else:
                    first[key] = at
    return first, repeats


def delete_streams(client: redis.Redis) -> None:
    batch = []
    for key in client.scan_iter(match=STREAM_PREFIX + "*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


def chat_devices(server: ChatServer) -> list[str]:
    found = []
    for chat_id in server.store.chat_ids():
        chat = server.store.get(chat_id, with_events=False)
        if chat is not None:
            found.append(chat.device_id)
    return found


def noise_census(server: ChatServer) -> dict[str, int]:
    """What the Chat Server side of the noise did over the run."""
    counts = {"alias_changes": 0, "alias_switches": 0, "other_client_refreshes": 0}
    for chat_id in server.store.chat_ids():
        chat = server.store.get(chat_id, with_events=False)
        if chat is None:
            continue
        counts["alias_switches"] += chat.alias_switches
        counts["alias_changes"] += len(chat.aliases) - 1 - chat.alias_switches
        counts["other_client_refreshes"] += chat.other_client_refreshes
    return counts
