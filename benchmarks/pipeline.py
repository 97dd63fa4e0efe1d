"""Benchmark the whole relay (ingress + N worker processes) against the naive baseline, on loopback.

Both systems get the same workload from the same simulated GMS cluster, in the same invocation:
  ours   `gms-relay ingress` + N `gms-relay worker` processes (drain jobs, coalesced Refresh);
  naive  benchmarks/naive.py: one plain RQ job per push on N forking `rq worker` processes.

The simulated GMS is this process plus `--senders` sender processes:
  - the simulator's Chat API v2 server (simulator.server.ChatServer) and its in-memory transcripts;
  - a driver opening `--chats` concurrent reliable-mode chats (a new one whenever one ends) and adding
    bursty activity at `--rate` events/s: a message, often followed within ms by typing events and
    another message (the simulator's mix). Every event is one trigger, as Chat Server sends them;
  - Chat Server's resends: a trigger not acknowledged by a Refresh within `--resend-delay` seconds is
    sent again with notify-attempt + 1 (up to `--resend-attempts` times); `--duplicate-rate` of the
    triggers are also sent twice (exact duplicates);
  - K sender processes, each one sequential keep-alive HTTP/1.1 connection like one GMS node (a chat
    always goes through the same node), timing every push with the wall clock.
Every trigger carries `secure-key` and `app-dbid` (flex-push-content incl. both) so both systems can
Refresh; the Chat API rejects a Refresh whose alias is not the chat's current one, as a GMS in front of
several Chat Servers does (`--no-require-alias` turns that off; it is off for naive, which sends none).

Protocol noise (`--noise`, or `--compare-noise`: the same workload without, then with noise, in one
invocation on the same machine) adds to the exact duplicates and the natural repeated positions:
  - ahead notifications: another client of the customer fetches `ahead_rate` (2%) of the event batches
    at once, so the batch's triggers carry a position past the batch, beyond what the relay fetched;
  - late notifications: `late_rate` (2%) of the triggers are held 100-300 ms on their node (position,
    attempt, app-dbid and the resend timer date from when Chat Server sent them); later pushes overtake;
  - alias changes: a Refresh hands out a new alias (`alias_change`, 5%), as gms-protocol.md describes;
    `--alias-switch P` also changes it outside any Refresh before a share P of the batches (not in the
    protocol doc: a session moving to another Chat Server), which only later triggers' app-dbid reveal.

Measured per run (JSON with `--json PATH`, a table on stdout):
  - trigger-to-stream latency: trigger POST sent (wall clock) -> the event's entry in the Redis stream
    (the entry id's milliseconds are Redis server time, same clock); with `--webhook` (ours only) also
    -> the webhook delivery received. p50/p95/p99 over the events announced in the measurement window
    (after `--warmup`); an event never delivered counts as infinitely late;
  - sustained notifications/s accepted and events/s delivered (distinct (session, index)) in the window;
  - Refresh calls per trigger (coalescing), resends Chat Server had to send (and per 1,000 fresh
    triggers), Refreshes with a stale or missing alias (from the Chat API's RefreshLog), duplicates in
    the stream;
  - Redis used_memory vs the idle baseline: per active chat at the end of the window, and after every
    chat ended (with a key census by kind); ingress / worker RSS (VmRSS); CPU seconds per component.

    python benchmarks/pipeline.py [--workers 1,2] [--rate 500] [--duration 20] [--chats 200]
                                  [--systems ours,naive] [--webhook] [--noise | --compare-noise]
                                  [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
# Run as a script, this folder would come first on sys.path and benchmarks/ingress.py would shadow the
# `ingress` package: drop it and put the repo root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import heapq  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import queue  # noqa: E402
import random  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import asdict, dataclass, field, replace  # noqa: E402
from multiprocessing.connection import Connection  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import msgspec  # noqa: E402
import redis  # noqa: E402

from shared.redis_server import RedisServer, free_port  # noqa: E402
from shared.stack import Stack, wait_until_ready  # noqa: E402
from simulator.chat_api import Faults, RefreshRecord  # noqa: E402
from simulator.scenario import agent_activity  # noqa: E402
from simulator.server import ChatServer  # noqa: E402
from simulator.transcript import Chat, EventSpec, PendingTrigger  # noqa: E402
from tests.processes import relay_env, relay_processes  # noqa: E402

SYSTEMS = ("ours", "naive")
SERVICE = "customer-support"
STREAM_PREFIX = "gms-relay:events:"
COUNTERS = "gms-relay:counters"
NAIVE_QUEUE = "naive"
# Targets of issue #6, checked by benchmarks/sweep.py.
TARGET_P50_MS = 20.0
TARGET_P99_MS = 100.0
TARGET_RATE = 500.0
TARGET_THROUGHPUT_X = 3.0
# Targets with protocol noise (2 workers, ~500 triggers/s): printed next to the --compare-noise figures.
NOISE_TARGET_P99_MS = 50.0
NOISE_TARGET_RESENDS_PER_1000 = 1.0
NOISE_TARGET_STALE_ALIAS = 0
# Saturation: delivered below this share of the offered rate, or p99 above this.
SATURATED_SHARE = 0.9
SATURATED_P99_MS = 1000.0
_RESEND_POLL_S = 0.05
CLOSE_WITHIN_S = 10.0  # chats still open at the end are closed within this
_SAMPLE_S = 0.5
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_SPAWN = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class Workload:
    rate: float = 500.0  # offered events (= fresh triggers) per second over all chats
    duration_s: float = 20.0  # sending time, warm-up included
    warmup_s: float = 3.0  # excluded from every measurement
    chats: int = 200  # concurrent chats
    events_per_chat: int = 40  # agent/customer events per chat before it ends
    senders: int = 4  # GMS nodes (sequential senders)
    resend_delay_s: float = 1.0  # Chat Server flex-push-resend-delay (1 s is its minimum)
    resend_attempts: int = 3
    duplicate_rate: float = 0.02  # triggers also sent twice, unchanged
    drain_timeout_s: float = 30.0  # after sending stops, how long to wait for the backlog
    webhook: bool = False  # ours only: also measure trigger -> webhook received
    marker_ttl_s: int = 0  # ours only: CHAT_STATE_TTL_S = SESSION_IDLE_TTL_S = this; measure after it
    seed: int = 1
    require_alias: bool = True  # the Chat API rejects a missing/stale alias (always off for naive)
    # Protocol noise; the rates below apply only when `noise` is set.
    noise: bool = False
    ahead_rate: float = 0.02  # event batches another client fetches before their triggers go out
    late_rate: float = 0.02  # triggers held on their node ...
    late_min_ms: int = 100  # ... for a uniform 100-300 ms
    late_max_ms: int = 300
    alias_change: float = 0.05  # successful Refreshes that hand out a new alias
    # Event batches preceded by an alias change outside any Refresh (off by default: not in the protocol
    # doc; each one costs about one refused Refresh, recovered from the next trigger's app-dbid).
    alias_switch: float = 0.0

    def faults(self, system: str) -> Faults:
        """The Chat API's switches for one run of `system`."""
        noisy = self.noise
        return Faults(
            alias_change=self.alias_change if noisy else 0.0,
            alias_switch=self.alias_switch if noisy else 0.0,
            ahead_rate=self.ahead_rate if noisy else 0.0,
            require_alias=self.require_alias and system == "ours",
            rng=random.Random(self.seed + 2),
        )


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


def _tree(pid: int) -> list[int]:
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


# --- the GMS nodes: sender processes -----------------------------------------------------------------


class Item(NamedTuple):
    """One push for a sender: a reliable trigger (position -1: the customer left)."""

    device_id: str
    session_id: str
    user_id: str
    secure_key: str
    cometd_key: str
    position: int
    event_index: int  # the transcript index this trigger announces
    attempt: int
    duplicate: bool  # send it twice
    dispatched_at: float  # time.time() when Chat Server generated it (handed it to the node)
    generated_mono: float  # the same moment on the monotonic clock (system-wide on Linux)
    app_dbid: str = ""  # the chat's alias when Chat Server generated it
    late_s: float = 0.0  # noise: held this long on the node after it was generated


# (session, index, attempt, position, duplicate, dispatched_at, sent_at, replied_at, status, outcome, late)
SendRecord = tuple[str, int, int, int, bool, float, float, float, int, str, bool]


class HttpConnection:
    """Minimal HTTP/1.1 keep-alive client on a raw socket: one request at a time, as a GMS node."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock: socket.socket | None = None
        self.buffer = b""

    def connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        return self.sock

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        sock = self.connect()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.address[0]}\r\nUser-Agent: gms-bench\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            sock.sendall(head + body)
            return self._read()
        except OSError:
            self.close()
            raise

    def _read(self) -> tuple[int, bytes]:
        assert self.sock is not None
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buffer += chunk
        lines = buffer[:end].split(b"\r\n")
        status = int(lines[0][9:12])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        total = end + 4 + length
        while len(buffer) < total:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buffer += chunk
        self.buffer = buffer[total:]
        return status, buffer[end + 4 : total]

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def trigger_body(item: Item) -> bytes:
    """A reliable trigger exactly as the simulator's sender builds it (simulator/sender.py)."""
    user_data = {
        "notify-position": str(item.position),
        "notify-attempt": str(item.attempt),
        "session-id": item.session_id,
        "user-id": item.user_id,
        "secure-key": item.secure_key,
    }
    if item.app_dbid:
        user_data["app-dbid"] = item.app_dbid
    event = {
        "index": item.event_index,
        "type": "PushUrl",
        "from": {"participantId": 0},
        "text": "PUSH-NOTIFICATION",
        "utcTime": int(time.time() * 1000),
        "userData": user_data,
    }
    message = {
        "messages": [event],
        "chatId": "deprecated",
        "userId": "deprecated",
        "secureKey": item.cometd_key,
        "chatEnded": item.position == -1,
    }
    return msgspec.json.encode({"deviceId": item.device_id, "message": message})


def sender_main(port: int, inbox: Any, sent: Any, results: Connection, counters: Any) -> None:
    """A GMS node: POST each queued push, wait for the reply, record it; None ends the loop.

    Items come in batches (the triggers of one burst of one chat). A late item (noise) is held until
    `generated_mono + late_s` while the items after it go ahead; held items are POSTed by the same loop
    once due, so the node stays sequential. For each trigger sent, (session, position, index, attempt,
    resend-timer start, generation time) goes back on `sent` (monotonic clock) once its batch is done.
    `counters` (shared): [0] pushes handled (-1 until connected), [1] triggers reported on `sent`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    connection = HttpConnection("127.0.0.1", port)
    connection.connect()
    counters[0] = 0
    records: list[SendRecord] = []
    held: list[tuple[float, int, Item]] = []  # (due, sequence, item), due first
    sequence = 0
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        try:
            batch: list[Item] | None = inbox.get(timeout=timeout)
        except queue.Empty:
            batch = []
        if batch is None:
            break
        notes = []
        handled = 0
        for item in batch:
            if item.late_s > 0:
                heapq.heappush(held, (item.generated_mono + item.late_s, sequence, item))
                sequence += 1
                continue
            notes.extend(_post_item(connection, item, records))
            handled += 1
        while held and held[0][0] <= time.monotonic():
            notes.extend(_post_item(connection, heapq.heappop(held)[2], records))
            handled += 1
        if notes:
            sent.put(notes)
            counters[1] += len(notes)
        counters[0] += handled
    connection.close()
    results.send(records)
    results.close()


def _post_item(
    connection: HttpConnection, item: Item, records: list[SendRecord]
) -> list[tuple[str, int, int, int, float, float]]:
    body = trigger_body(item)
    # Chat Server's resend timer starts when the POST leaves, or for a late trigger when Chat Server
    # sent it (it was held on the way).
    posted = item.generated_mono if item.late_s else time.monotonic()
    for copy in range(2 if item.duplicate else 1):
        sent_at = time.time()
        try:
            status, reply = connection.post("/push", body)
            outcome = reply[11:-2].decode(errors="replace") if status == 200 else reply[:60].decode()
        except OSError as exc:
            status, outcome = 0, type(exc).__name__
        replied_at = time.time()
        records.append(
            (
                item.session_id,
                item.event_index,
                item.attempt,
                item.position,
                copy == 1,
                item.dispatched_at,
                sent_at,
                replied_at,
                status,
                outcome,
                item.late_s > 0,
            )
        )
    if item.position == -1:  # the customer is gone after -1: nobody to resend to
        return []
    return [(item.session_id, item.position, item.event_index, item.attempt, posted, item.generated_mono)]


# --- the webhook receiver (ours, --webhook): its own process -----------------------------------------


def receiver_main(port: int, control: Connection, received: Any) -> None:
    """Run simulator.receiver.WebhookReceiver; report the first arrival of each (session, index)."""
    from simulator.receiver import WebhookReceiver

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    first: dict[tuple[str, int], float] = {}
    with WebhookReceiver(port=port) as receiver:
        control.send("ready")
        seen = 0
        while not control.poll(0.1):
            seen = _scan_deliveries(receiver.accepted(), seen, first)
            received.value = len(first)
        control.recv()
        _scan_deliveries(receiver.accepted(), seen, first)
        control.send(first)


def _scan_deliveries(accepted: list[Any], seen: int, first: dict[tuple[str, int], float]) -> int:
    for delivery in accepted[seen:]:
        body = json.loads(delivery.body)
        if body.get("type") != "chat.events":
            continue
        data = body["data"]
        for event in data["events"]:
            first.setdefault((data["sessionId"], event["index"]), delivery.received_at)
    return len(accepted)


# --- the simulated GMS + Chat Server -----------------------------------------------------------------


def _pace(next_at: float, step_s: float) -> float:
    """Sleep until `next_at + step_s` (an absolute schedule: oversleeping is caught up)."""
    next_at += step_s
    delay = next_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    return next_at


@dataclass
class _Pending(PendingTrigger):
    """A sent trigger. `sent_at` (when its POST left) starts the resend timer; a Refresh arriving
    after `generated_at` (when Chat Server generated it) acknowledges it."""

    generated_at: float = 0.0


@dataclass
class LiveChat:
    chat_id: str
    remaining: int
    joined: bool = False  # the agent has joined (the chat's first push)


@dataclass
class GmsStats:
    chats_opened: int = 0
    events: int = 0
    triggers: int = 0  # fresh triggers dispatched (one per event, plus notify-position -1 at the end)
    resends: int = 0
    exhausted: int = 0


class Gms:
    """Chat Server + GMS nodes: drives chats in the ChatServer's store, dispatches their triggers to
    the sender processes (a chat always to the same node) and resends unacknowledged triggers."""

    def __init__(self, server: ChatServer, push_port: int, workload: Workload) -> None:
        self.server = server
        self.store = server.store
        self.workload = workload
        self.rng = random.Random(workload.seed)
        self.dup_rng = random.Random(workload.seed + 1)
        self.late_rng = random.Random(workload.seed + 3)  # its own, so noise leaves the other draws alone
        self.stats = GmsStats()
        self.live: list[LiveChat] = []
        self.device_ids: list[str] = []
        self._todo: queue.SimpleQueue[tuple[Chat, list[dict[str, Any]]] | None] = queue.SimpleQueue()
        self._inboxes: list[Any] = []
        self._results: list[Connection] = []
        self._counters: list[Any] = []
        self._sent: Any = _SPAWN.Queue()
        self._pending_seen = 0
        self._dispatched = [0] * workload.senders
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.senders: list[Any] = []
        for _ in range(workload.senders):
            inbox = _SPAWN.Queue()
            receive, send = _SPAWN.Pipe(duplex=False)
            counters = _SPAWN.Array("q", [-1, 0], lock=False)
            process = _SPAWN.Process(
                target=sender_main, args=(push_port, inbox, self._sent, send, counters), daemon=True
            )
            process.start()
            send.close()
            self._inboxes.append(inbox)
            self._results.append(receive)
            self._counters.append(counters)
            self.senders.append(process)
        self.store.subscribe(self._on_events)
        self._pending_thread = threading.Thread(target=self._pending_loop, name="gms-pending", daemon=True)
        self._pending_thread.start()
        self._threads = [
            threading.Thread(target=self._dispatch_loop, name="gms-dispatch", daemon=True),
            threading.Thread(target=self._resend_loop, name="gms-resend", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # Chats ---------------------------------------------------------------------------------------

    def open_chat(self) -> LiveChat:
        device_id = "dev-" + secrets.token_hex(12)
        chat = self.store.create_chat(
            service=SERVICE,
            nickname="Kim",
            device_id=device_id,
            mode="reliable",
            flex_secure_key=True,
            flex_app_dbid=True,
        )
        self.device_ids.append(device_id)
        self.stats.chats_opened += 1
        return LiveChat(chat.chat_id, self.workload.events_per_chat)

    def join(self, live: LiveChat) -> int:
        """The agent joins: the chat's first push (the customer's own join is not pushed)."""
        live.joined = True
        return self._append(live, [EventSpec("ParticipantJoined", "agent")])

    def _append(self, live: LiveChat, specs: list[EventSpec]) -> int:
        specs = specs[: max(live.remaining, 1)]
        self.store.append(live.chat_id, specs)
        live.remaining -= len(specs)
        self.stats.events += len(specs)
        return len(specs)

    def burst(self, live: LiveChat) -> int:
        """One bit of activity (the simulator's mix, simulator/scenario.py); returns events added."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.1:
            specs = [EventSpec("Message", "customer", "Thanks!", {"messageType": "text"})]
        else:
            specs = agent_activity(rng, roll)
        return self._append(live, specs)

    def close_chat(self, live: LiveChat) -> int:
        """The customer leaves: ParticipantLeft, then Chat Server's notify-position -1 trigger."""
        self.stats.events += 1
        return len(self.store.end(live.chat_id, who="customer"))

    def drive(self, until: float) -> None:
        """Keep `chats` chats busy at `rate` events/s until the monotonic deadline `until`.

        Every push is paced, the agents' joins too, so the offered load is `rate` from the first second
        (no burst of `chats` joins at the start)."""
        workload = self.workload
        self.live = [self.open_chat() for _ in range(workload.chats)]  # requested; nothing pushed yet
        next_at = time.monotonic()
        while time.monotonic() < until:
            chat = self.rng.choice(self.live)
            if not chat.joined:
                added = self.join(chat)
            elif chat.remaining <= 0:
                self.live.remove(chat)
                added = self.close_chat(chat)
                self.live.append(self.open_chat())
            else:
                added = self.burst(chat)
            next_at = _pace(next_at, added / workload.rate)

    def close_all(self) -> None:
        """End every chat, paced at the offered rate (but within CLOSE_WITHIN_S)."""
        rate = max(self.workload.rate, len(self.live) / CLOSE_WITHIN_S)
        next_at = time.monotonic()
        for chat in self.live:
            next_at = _pace(next_at, self.close_chat(chat) / rate)
        self.live = []

    # Triggers ------------------------------------------------------------------------------------

    def _on_events(self, chat: Chat, events: list[dict[str, Any]]) -> None:
        """Store listener (under the store lock): only enqueue."""
        self._todo.put((chat, events))

    def _dispatch_loop(self) -> None:
        while True:
            entry = self._todo.get()
            if entry is None:
                return
            chat, events = entry
            # Chat Server generates one trigger per event, notify-position = what the client has not
            # acknowledged with a Refresh yet, app-dbid = the alias now.
            position, alias = self.store.trigger_state(chat.chat_id)
            batch = [self._item(chat, position, event["index"], 0, alias) for event in events]
            left = any(
                e.get("type") == "ParticipantLeft" and (e.get("from") or {}).get("type") == "Client"
                for e in events
            )
            if left:
                batch.append(self._item(chat, -1, events[-1]["index"], 0, alias))
            self._send(chat.chat_id, batch)

    def _item(self, chat: Chat, position: int, index: int, attempt: int, alias: str) -> Item:
        workload = self.workload
        duplicate = attempt == 0 and self.dup_rng.random() < workload.duplicate_rate
        late_s = 0.0
        if workload.noise and self.late_rng.random() < workload.late_rate:
            late_s = self.late_rng.uniform(workload.late_min_ms, workload.late_max_ms) / 1000
        return Item(
            chat.device_id,
            chat.chat_id,
            chat.user_id,
            chat.secure_key,
            chat.cometd_key,
            position,
            index,
            attempt,
            duplicate,
            time.time(),
            time.monotonic(),
            alias,
            late_s,
        )

    def _send(self, chat_id: str, batch: list[Item]) -> None:
        """Hand a chat's triggers to its GMS node (a chat is pinned to one node)."""
        node = zlib.crc32(chat_id.encode()) % len(self._inboxes)
        with self._lock:
            self._dispatched[node] += len(batch)
            for item in batch:
                if item.attempt == 0:
                    self.stats.triggers += 1
                else:
                    self.stats.resends += 1
        self._inboxes[node].put(batch)

    def _pending_loop(self) -> None:
        """Triggers the nodes have sent: Chat Server now waits for a Refresh to acknowledge them."""
        while True:
            notes = self._sent.get()
            if notes is None:
                return
            for sid, position, index, attempt, posted, generated in notes:
                self.store.add_pending(_Pending(sid, position, index, attempt, posted, generated))
            self._pending_seen += len(notes)

    def _resend_loop(self) -> None:
        while not self._stop.wait(_RESEND_POLL_S):
            for pending in self.store.take_due(time.monotonic(), self.workload.resend_delay_s):
                chat = self.store.get(pending.chat_id, with_events=False)
                if chat is None or chat.end_seen:
                    continue
                generated = pending.generated_at if isinstance(pending, _Pending) else pending.sent_at
                if chat.last_refresh_at is not None and chat.last_refresh_at >= generated:
                    # Chat Server counts any Refresh after it generated the trigger as the
                    # acknowledgement, also one that arrived while the trigger still sat in GMS.
                    continue
                if pending.attempt >= self.workload.resend_attempts:
                    with self._lock:
                        self.stats.exhausted += 1
                    continue
                item = self._item(chat, pending.position, pending.index, pending.attempt + 1, chat.alias)
                self._send(chat.chat_id, [item])

    def idle(self) -> bool:
        """Every push dispatched has been answered, and every trigger is acknowledged (or exhausted)."""
        if not self._todo.empty():
            return False
        with self._lock:
            dispatched = list(self._dispatched)
        if any(c[0] < n for c, n in zip(self._counters, dispatched, strict=True)):
            return False
        if sum(c[1] for c in self._counters) > self._pending_seen:
            return False
        return self.store.pending_count() == 0

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until every sender process has started and connected."""
        if not _wait(lambda: all(c[0] >= 0 for c in self._counters), timeout_s):
            raise RuntimeError("GMS sender processes did not start")

    @property
    def expected_events(self) -> int:
        """Every transcript event so far: what we appended plus each chat's unpushed customer join."""
        return self.stats.events + self.stats.chats_opened

    def sender_pids(self) -> list[int]:
        return [p.pid for p in self.senders if p.pid is not None]

    def stop(self) -> list[SendRecord]:
        """Stop every thread and sender; returns every push record."""
        self.store.unsubscribe(self._on_events)
        self._stop.set()
        self._todo.put(None)
        for thread in self._threads:
            thread.join(10)
        for inbox in self._inboxes:
            inbox.put(None)
        records: list[SendRecord] = []
        for results, process in zip(self._results, self.senders, strict=True):
            with contextlib.suppress(EOFError, OSError):
                if results.poll(30):
                    records.extend(results.recv())
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        self._sent.put(None)
        self._pending_thread.join(10)
        for channel in [*self._inboxes, self._sent]:
            channel.close()
            channel.join_thread()
        return records

    def kill(self) -> None:
        for process in self.senders:
            if process.is_alive():
                process.kill()
                process.join()


# --- the systems under test --------------------------------------------------------------------------


class System:
    """A system under test: started by `run()` in a `with`, stopped at its end."""

    name = ""

    def __init__(
        self, redis_url: str, gms_url: str, workers: int, webhook_url: str | None, marker_ttl_s: int = 0
    ) -> None:
        self.redis_url = redis_url
        self.gms_url = gms_url
        self.workers = workers
        self.webhook_url = webhook_url
        self.marker_ttl_s = marker_ttl_s
        self.port = 0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        """Processes worth watching: name -> pid."""
        raise NotImplementedError

    def finished(self, client: redis.Redis, expected_events: int) -> bool:
        """No work left inside the system."""
        raise NotImplementedError


class Ours(System):
    name = "ours"

    def start(self) -> None:
        env = {"REDIS_URL": self.redis_url, "GMS_URL": self.gms_url}
        if self.webhook_url:
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
            env |= {"WEBHOOK_URL": self.webhook_url, "WEBHOOK_SECRET": secret}
        if self.marker_ttl_s:
            ttl = str(self.marker_ttl_s)
            env |= {"CHAT_STATE_TTL_S": ttl, "SESSION_IDLE_TTL_S": ttl}  # ended markers are chat state
        self._context = relay_processes(relay_env(**env), workers=self.workers)
        self.processes = self._context.__enter__()
        self.port = self.processes.port

    def stop(self) -> None:
        self._context.__exit__(None, None, None)

    def pids(self) -> dict[str, int]:
        found = {f"worker-{i}": w.process.pid for i, w in enumerate(self.processes.workers)}
        if self.processes.ingress is not None:
            found["ingress"] = self.processes.ingress.process.pid
        return found

    def finished(self, client: redis.Redis, expected_events: int) -> bool:
        pipe = client.pipeline(transaction=False)
        pipe.hget(COUNTERS, "events_delivered")
        pipe.zcard("gms-relay:dirty")
        pipe.zcard("gms-relay:deliveries")
        delivered, dirty, deliveries = pipe.execute()
        return int(delivered or 0) >= expected_events and dirty == 0 and deliveries == 0


class Naive(System):
    name = "naive"

    def start(self) -> None:
        self.stack = Stack()
        self.port = free_port()
        env = {**os.environ, "REDIS_URL": self.redis_url, "GMS_URL": self.gms_url}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        rq = str(Path(sys.executable).with_name("rq"))
        try:
            for number in range(self.workers):
                argv = [
                    rq,
                    "worker",
                    "-w",
                    "rq.worker.Worker",
                    "-c",
                    "benchmarks.naive",
                    "-u",
                    self.redis_url,
                ]
                argv += ["-q", "-P", str(_ROOT), "-n", f"naive-{number}-{os.getpid()}", NAIVE_QUEUE]
                self.stack.start(f"naive-worker-{number}", argv, env)
            argv = [sys.executable, str(_HERE / "naive.py"), "serve", "--port", str(self.port)]
            self.app = self.stack.start("naive-app", [*argv, "--redis-url", self.redis_url], env)
            wait_until_ready(f"http://127.0.0.1:{self.port}/livez", alive=self.app.alive)
        except BaseException:
            self.stack.stop()
            raise

    def stop(self) -> None:
        self.stack.stop()

    def pids(self) -> dict[str, int]:
        found = {"ingress": self.app.process.pid}
        workers = [c for c in self.stack.children if c.name.startswith("naive-worker")]
        found |= {f"worker-{i}": c.process.pid for i, c in enumerate(workers)}
        return found

    def finished(self, client: redis.Redis, expected_events: int) -> bool:
        pipe = client.pipeline(transaction=False)
        pipe.llen(f"rq:queue:{NAIVE_QUEUE}")
        pipe.zcard(f"rq:wip:{NAIVE_QUEUE}")
        waiting, running = pipe.execute()
        return bool(waiting == 0 and running == 0)


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


# --- analysis ----------------------------------------------------------------------------------------


def percentiles(values: list[float], undelivered: int = 0) -> dict[str, float | None]:
    """p50/p95/p99/p99.9/max in ms; undelivered values count as infinitely late (reported as None)."""
    ordered = sorted(values) + [math.inf] * undelivered
    if not ordered:
        return {"p50": None, "p95": None, "p99": None, "p99.9": None, "max": None, "n": 0}

    def pick(share: float) -> float | None:
        value = ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]
        return None if math.isinf(value) else round(value, 2)

    return {
        "p50": pick(0.5),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "p99.9": pick(0.999),
        "max": pick(1.0),
        "n": len(ordered),
    }


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


@dataclass
class RunResult:
    system: str
    workers: int
    offered_rate: float
    window_s: float
    sent_rate: float  # pushes POSTed per second in the window (all kinds, resends and duplicates too)
    accepted_rate: float  # notifications answered 200 per second in the window
    delivered_rate: float  # distinct events reaching the stream per second in the window
    latency_stream_ms: dict[str, float | None]  # trigger POST sent -> event in the stream
    latency_event_ms: dict[str, float | None]  # trigger generated (event appended) -> event in the stream
    latency_webhook_ms: dict[str, float | None] | None
    push_reply_ms: dict[str, float | None]
    sender_lag_ms: dict[str, float | None]  # GMS queueing before a push left (sender-bound if high)
    events_total: int
    events_delivered: int
    events_undelivered: int
    stream_duplicates: int
    triggers: int
    pushes: int
    rejected: int
    resends: int  # over the whole run, the closing of every chat at the end included
    resends_window: int  # sent during the measurement window
    exhausted: int
    refreshes: dict[str, int]
    refreshes_per_trigger: float
    outcomes: dict[str, int]
    redis: dict[str, Any]
    rss_kb: dict[str, dict[str, int]]
    cpu_s: dict[str, float]
    counters: dict[str, float]
    rq_jobs: dict[str, float]  # jobs the RQ workers ran: drains (ours) or one per push (naive)
    drained: bool
    drain_s: float
    saturated: bool = False
    sender_limited: bool = False
    notes: list[str] = field(default_factory=list)
    noise: bool = False  # run with protocol noise
    triggers_window: int = 0  # fresh triggers sent in the measurement window
    resends_per_1000_triggers: float = 0.0  # in the measurement window
    # Refreshes whose alias was not the chat's current one (RefreshLog alias_kind), over the whole run:
    # stale (an alias the chat had before) or unknown, and missing (none sent). Target: 0.
    refreshes_stale_alias: int = 0
    refreshes_missing_alias: int = 0
    refreshes_alias_error: int = 0  # of those, answered HTTP 400 (require_alias)
    require_alias: bool = True
    # What the noise did: late pushes, alias changes on Refresh, switches, other-client Refreshes.
    noise_counts: dict[str, int] = field(default_factory=dict)


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


@contextmanager
def webhook_receiver(enabled: bool) -> Iterator[tuple[str | None, Callable[[], int], Any]]:
    """Start the receiver process; yields (url, received count, stop() -> first arrivals)."""
    if not enabled:
        yield None, lambda: 0, lambda: {}
        return
    port = free_port()
    parent, child = _SPAWN.Pipe()
    received = _SPAWN.Value("q", 0, lock=False)
    process = _SPAWN.Process(target=receiver_main, args=(port, child, received), daemon=True)
    process.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("webhook receiver did not start")
        parent.recv()

        def stop() -> dict[tuple[str, int], float]:
            parent.send("stop")
            first: dict[tuple[str, int], float] = parent.recv() if parent.poll(60) else {}
            return first

        yield f"http://127.0.0.1:{port}/webhook", lambda: int(received.value), stop
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


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
                    now = {name: sum(cpu_s(p) for p in _tree(pid)) for name, pid in watched.items()}
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
                first, repeats = read_streams(client, _devices(chat_server))
                time.sleep(0.5)
                snapshots["after_end"] = memory_info(client)
                after = snapshots["after_end"]["used_memory"]
                after_census = census(client)
                counters = {_text(k): float(v) for k, v in client.hgetall(COUNTERS).items()}
                ended_at = time.monotonic()
                _delete_streams(client)
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _devices(server: ChatServer) -> list[str]:
    found = []
    for chat_id in server.store.chat_ids():
        chat = server.store.get(chat_id, with_events=False)
        if chat is not None:
            found.append(chat.device_id)
    return found


def _delete_streams(client: redis.Redis) -> None:
    batch = []
    for key in client.scan_iter(match=STREAM_PREFIX + "*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def start_profilers(
    directory: Path, system: str, workers: int, pids: dict[str, int], workload: Workload, profile_format: str
) -> list[subprocess.Popen[bytes]]:
    """py-spy record of the ingress and the workers over the measurement window."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    directory.mkdir(parents=True, exist_ok=True)
    seconds = max(1, int(workload.duration_s - workload.warmup_s))
    started = []
    for name, pid in pids.items():
        suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[profile_format]
        label = f"{system}-noise" if workload.noise else system
        out = directory / f"{label}-w{workers}-{name}.{suffix}"
        argv = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"]
        argv += ["--nonblocking", "--gil", "--subprocesses", "--format", profile_format, "-o", str(out)]
        started.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return started


def analyse(
    *,
    system_name: str,
    workers: int,
    workload: Workload,
    window: tuple[float, float],
    records: list[SendRecord],
    stream_first: dict[tuple[str, int], float],
    stream_repeats: int,
    hook_first: dict[tuple[str, int], float] | None,
    expected: int,
    gms_stats: GmsStats,
    refreshes: dict[str, int],
    refresh_records: list[RefreshRecord],
    noise_counts: dict[str, int],
    require_alias: bool,
    redis_info: dict[str, Any],
    rss: dict[str, dict[str, int]],
    cpu: dict[str, float],
    counters: dict[str, float],
    rq_jobs: dict[str, float],
    drained: bool,
    drain_s: float,
    notes: list[str],
) -> RunResult:
    start, end = window
    span = max(end - start, 1e-9)
    announced: dict[tuple[str, int], float] = {}
    generated: dict[tuple[str, int], float] = {}
    for sid, index, attempt, position, duplicate, dispatched, sent_at, *_rest in records:
        if attempt == 0 and not duplicate and position != -1:
            announced.setdefault((sid, index), sent_at)
            generated.setdefault((sid, index), dispatched)
    in_window = {k: t for k, t in announced.items() if start <= t <= end}
    latencies, from_event, late = [], [], 0
    for key, sent_at in in_window.items():
        if key in stream_first:
            # An event can reach the stream before its own trigger left GMS (a Refresh for an earlier
            # trigger returned it): that counts as 0.
            latencies.append(max(0.0, (stream_first[key] - sent_at) * 1000))
            from_event.append(max(0.0, (stream_first[key] - generated[key]) * 1000))
        else:
            late += 1
    hook_latency = None
    if hook_first is not None:
        hooks = [max(0.0, (hook_first[k] - t) * 1000) for k, t in in_window.items() if k in hook_first]
        hook_latency = percentiles(hooks, len(in_window) - len(hooks))
    windowed = [r for r in records if start <= r[6] <= end]
    accepted = sum(1 for r in windowed if r[8] == 200 and start <= r[7] <= end)
    delivered = sum(1 for t in stream_first.values() if start <= t <= end)
    triggers = sum(1 for r in records if r[2] == 0 and not r[4])
    refresh_total = sum(refreshes.values())
    result = RunResult(
        system=system_name,
        workers=workers,
        offered_rate=workload.rate,
        window_s=round(span, 2),
        sent_rate=round(len(windowed) / span, 1),
        accepted_rate=round(accepted / span, 1),
        delivered_rate=round(delivered / span, 1),
        latency_stream_ms=percentiles(latencies, late),
        latency_event_ms=percentiles(from_event, late),
        latency_webhook_ms=hook_latency,
        push_reply_ms=percentiles([(r[7] - r[6]) * 1000 for r in windowed]),
        # Late (noise) pushes were held on purpose: not GMS queueing.
        sender_lag_ms=percentiles([(r[6] - r[5]) * 1000 for r in windowed if not r[4] and not r[10]]),
        events_total=expected,
        events_delivered=len(stream_first),
        events_undelivered=max(0, expected - len(stream_first)),
        stream_duplicates=stream_repeats,
        triggers=triggers,
        pushes=len(records),
        rejected=sum(1 for r in records if r[8] != 200),
        resends=sum(1 for r in records if r[2] > 0 and not r[4]),
        resends_window=sum(1 for r in windowed if r[2] > 0 and not r[4]),
        exhausted=gms_stats.exhausted,
        refreshes=refreshes,
        refreshes_per_trigger=round(refresh_total / max(triggers, 1), 3),
        outcomes=dict(Counter(r[9] for r in records)),
        redis=redis_info,
        rss_kb=rss,
        cpu_s=cpu,
        counters={
            k: v for k, v in counters.items() if not k.startswith("h:") or k.endswith(("|count", "|sum"))
        },
        rq_jobs=rq_jobs,
        drained=drained,
        drain_s=round(drain_s, 2),
        notes=notes,
        noise=workload.noise,
        refreshes_stale_alias=sum(1 for r in refresh_records if r.alias_kind in ("stale", "unknown")),
        refreshes_missing_alias=sum(1 for r in refresh_records if r.alias_kind == "missing"),
        refreshes_alias_error=sum(1 for r in refresh_records if r.outcome == "alias_error"),
        require_alias=require_alias,
        noise_counts=noise_counts,
    )
    result.triggers_window = sum(1 for r in windowed if r[2] == 0 and not r[4] and r[3] != -1)
    result.resends_per_1000_triggers = round(1000 * result.resends_window / max(result.triggers_window, 1), 2)
    p99 = result.latency_stream_ms["p99"]
    result.saturated = result.delivered_rate < SATURATED_SHARE * workload.rate or (
        p99 is None or p99 > SATURATED_P99_MS
    )
    sent_fresh = sum(1 for r in windowed if r[2] == 0 and not r[4]) / span
    result.sender_limited = sent_fresh < SATURATED_SHARE * workload.rate
    if result.sender_limited:
        result.notes.append(
            f"the GMS senders only sent {sent_fresh:.0f} fresh triggers/s of the {workload.rate:.0f} offered"
        )
    return result


# --- output ------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "timeout" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def format_table(results: list[RunResult]) -> str:
    header = (
        "| system | workers | offered/s | sent/s | accepted/s | events/s | stream p50 / p95 / p99 ms "
        "| webhook p50 / p99 ms | refresh/trigger | resends | stream dups | undelivered "
        "| Redis B/chat | after end (no streams) | RSS ingress / workers MiB |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        s = r.latency_stream_ms
        w = r.latency_webhook_ms
        hook = f"{_ms(w['p50'])} / {_ms(w['p99'])}" if w else "-"
        workers_rss = sum(v["peak"] for k, v in r.rss_kb.items() if k.startswith("worker"))
        ingress_rss = r.rss_kb.get("ingress", {}).get("peak", 0)
        after = r.redis["after_end_without_streams_delta_bytes"]
        system = f"{r.system}+noise" if r.noise else r.system
        lines.append(
            f"| {system} | {r.workers} | {r.offered_rate:.0f} | {r.sent_rate:.0f} | {r.accepted_rate:.0f} "
            f"| {r.delivered_rate:.0f} | {_ms(s['p50'])} / {_ms(s['p95'])} / {_ms(s['p99'])} | {hook} "
            f"| {r.refreshes_per_trigger:.2f} | {r.resends_window} | {r.stream_duplicates} "
            f"| {r.events_undelivered} "
            f"| {r.redis['per_active_chat_bytes']} | {after / 1024:+.0f} KiB "
            f"| {ingress_rss / 1024:.0f} / {workers_rss / 1024:.0f} |"
        )
    return "\n".join(lines)


def target_misses(r: RunResult) -> list[str]:
    """The protocol-noise targets this run misses (they are set for 2 workers at ~500 triggers/s)."""
    misses = []
    p99 = r.latency_stream_ms["p99"]
    if p99 is None or p99 > NOISE_TARGET_P99_MS:
        misses.append("p99")
    if r.resends_per_1000_triggers > NOISE_TARGET_RESENDS_PER_1000:
        misses.append("resends")
    if r.refreshes_stale_alias + r.refreshes_missing_alias > NOISE_TARGET_STALE_ALIAS:
        misses.append("alias")
    if r.events_undelivered:
        misses.append("missing events")
    return misses


def format_noise_table(results: list[RunResult]) -> str:
    """Each run with and without protocol noise, next to the targets."""
    header = (
        "| system | workers | noise | stream p50 / p99 / p99.9 ms | resends per 1,000 triggers "
        "| Refreshes stale / missing alias (rejected) | events missing "
        "| late pushes / alias changes / switches / other-client Refreshes | targets |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        s = r.latency_stream_ms
        n = r.noise_counts
        misses = target_misses(r)
        lines.append(
            f"| {r.system} | {r.workers} | {'on' if r.noise else 'off'} "
            f"| {_ms(s['p50'])} / {_ms(s['p99'])} / {_ms(s['p99.9'])} "
            f"| {r.resends_per_1000_triggers:.2f} ({r.resends_window} / {r.triggers_window}) "
            f"| {r.refreshes_stale_alias} / {r.refreshes_missing_alias} ({r.refreshes_alias_error}) "
            f"| {r.events_undelivered} "
            f"| {n.get('late_pushes', 0)} / {n.get('alias_changes', 0)} / {n.get('alias_switches', 0)} "
            f"/ {n.get('other_client_refreshes', 0)} "
            f"| {'met' if not misses else 'missed: ' + ', '.join(misses)} |"
        )
    lines.append(
        f"Targets (2 workers, ~{TARGET_RATE:.0f} triggers/s, with noise): stream p99 <= "
        f"{NOISE_TARGET_P99_MS:.0f} ms, <= {NOISE_TARGET_RESENDS_PER_1000:.0f} resend per 1,000 fresh "
        f"triggers, {NOISE_TARGET_STALE_ALIAS} Refreshes with a stale or missing alias, no event missing."
    )
    return "\n".join(lines)


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Workload()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", default="ours,naive", help="comma-separated: ours, naive")
    parser.add_argument("--workers", default="1,2", help="worker process counts, comma-separated")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="offered triggers/s")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="sending seconds")
    parser.add_argument("--warmup", type=float, default=defaults.warmup_s)
    parser.add_argument("--chats", type=int, default=defaults.chats, help="concurrent chats")
    parser.add_argument("--events-per-chat", type=int, default=defaults.events_per_chat)
    parser.add_argument("--senders", type=int, default=defaults.senders, help="GMS nodes")
    parser.add_argument("--mode", choices=["reliable"], default="reliable")
    parser.add_argument("--resend-delay", type=float, default=defaults.resend_delay_s)
    parser.add_argument("--resend-attempts", type=int, default=defaults.resend_attempts)
    parser.add_argument("--duplicate-rate", type=float, default=defaults.duplicate_rate)
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s)
    parser.add_argument("--webhook", action="store_true", help="ours: also measure webhook latency")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--marker-ttl",
        type=int,
        default=0,
        help="ours: set CHAT_STATE_TTL_S (ended markers) to this and measure Redis once they expired",
    )
    parser.add_argument(
        "--no-require-alias",
        dest="require_alias",
        action="store_false",
        help="the Chat API accepts Refreshes with a missing or stale alias (default: HTTP 400, as a GMS in "
        "front of several Chat Servers; always accepted for naive, which sends none)",
    )
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument(
        "--noise",
        action="store_true",
        help="protocol noise: ahead and late notifications, alias changes on Refresh and outside it",
    )
    noise.add_argument(
        "--compare-noise",
        action="store_true",
        help="run every system and worker count twice, without then with noise, and compare them",
    )
    parser.add_argument(
        "--ahead-rate",
        type=float,
        default=defaults.ahead_rate,
        help="noise: share of event batches another client fetches before their triggers go out",
    )
    parser.add_argument(
        "--late-rate",
        type=float,
        default=defaults.late_rate,
        help="noise: share of triggers held on their node",
    )
    parser.add_argument(
        "--late-ms",
        default=f"{defaults.late_min_ms},{defaults.late_max_ms}",
        help="noise: how long a late trigger is held, MIN,MAX ms (uniform)",
    )
    parser.add_argument(
        "--alias-change",
        type=float,
        default=defaults.alias_change,
        help="noise: share of successful Refreshes that hand out a new alias",
    )
    parser.add_argument(
        "--alias-switch",
        type=float,
        default=defaults.alias_switch,
        help="noise: share of event batches preceded by an alias change outside any Refresh (default 0)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--profile", type=Path, help="py-spy profiles of ingress and workers go here")
    parser.add_argument("--profile-format", choices=["flamegraph", "raw", "speedscope"], default="flamegraph")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or any(s not in SYSTEMS for s in systems):
        parser.error(f"--systems: choose from {', '.join(SYSTEMS)}")
    if args.rate <= 0 or args.duration <= args.warmup:
        parser.error("--rate must be > 0 and --duration longer than --warmup")
    args.systems = systems
    args.workers = [int(w) for w in args.workers.split(",")]
    try:
        low, high = (int(v) for v in args.late_ms.split(","))
    except ValueError:
        parser.error("--late-ms: expected MIN,MAX in ms, e.g. 100,300")
    if not 0 < low <= high:
        parser.error("--late-ms: expected 0 < MIN <= MAX")
    args.late_ms = (low, high)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workload = Workload(
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        chats=args.chats,
        events_per_chat=args.events_per_chat,
        senders=args.senders,
        resend_delay_s=args.resend_delay,
        resend_attempts=args.resend_attempts,
        duplicate_rate=args.duplicate_rate,
        drain_timeout_s=args.drain_timeout,
        webhook=args.webhook,
        seed=args.seed,
        marker_ttl_s=args.marker_ttl,
        require_alias=args.require_alias,
        noise=args.noise,
        ahead_rate=args.ahead_rate,
        late_rate=args.late_rate,
        late_min_ms=args.late_ms[0],
        late_max_ms=args.late_ms[1],
        alias_change=args.alias_change,
        alias_switch=args.alias_switch,
    )
    variants = [False, True] if args.compare_noise else [workload.noise]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    # This process is the simulated GMS (Chat API server, driver, dispatcher): hand the GIL over
    # quickly so a Refresh is not held up behind the driver's threads.
    sys.setswitchinterval(0.001)
    results: list[RunResult] = []
    for workers in args.workers:
        for system in args.systems:
            for noisy in variants:
                label = f"{system}{' with noise' if noisy else ''}"
                print(f"-- {label}, {workers} worker(s), {workload.rate:.0f} triggers/s ...", file=sys.stderr)
                result = run_once(
                    system, workers, replace(workload, noise=noisy), args.profile, args.profile_format
                )
                for note in result.notes:
                    print(f"   note: {note}", file=sys.stderr)
                results.append(result)
    print(format_table(results))
    if any(r.noise for r in results):
        print()
        print(format_noise_table(results))
    if args.json:
        document = {"machine": machine(), "workload": asdict(workload), "runs": [asdict(r) for r in results]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
