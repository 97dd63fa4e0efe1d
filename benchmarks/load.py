"""The load: the simulated GMS + Chat Server driving chats in the simulator's store at the offered rate,
dispatching their triggers to the GMS nodes (benchmarks/senders.py) and resending unacknowledged ones."""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import random
import secrets
import threading
import time
import zlib
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.senders import Item, SendRecord, sender_main
from benchmarks.workload import Workload
from simulator.scenario import agent_activity
from simulator.server import ChatServer
from simulator.transcript import Chat, EventSpec, PendingTrigger

SERVICE = "customer-support"
_RESEND_POLL_S = 0.05
CLOSE_WITHIN_S = 10.0  # chats still open at the end are closed within this
_SPAWN = multiprocessing.get_context("spawn")


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
        deadline = time.monotonic() + timeout_s
        while not all(c[0] >= 0 for c in self._counters):
            if time.monotonic() > deadline:
                raise RuntimeError("GMS sender processes did not start")
            time.sleep(0.1)

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
