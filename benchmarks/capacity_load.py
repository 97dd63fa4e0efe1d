"""The load of benchmarks/capacity.py: reliable triggers from benchmarks/load.py's GMS (the pipeline
benchmark's workload and sender processes), payload pushes from simulator scenarios in processes of
their own. Both report every push answered 200 as (time.monotonic() when sent, kind, events carried)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.load import Gms
from benchmarks.workload import Workload
from simulator.server import ChatServer

Acked = tuple[float, str, int]  # (time.monotonic() the POST left, "trigger" | "payload", events carried)
_SPAWN = multiprocessing.get_context("spawn")
PAYLOAD_NODES = 3  # GMS nodes (processes) sending payload pushes: one cannot offer more than ~300/s
# Concurrent chats per offered event/s: each chat then has an event every 2 s on average (in bursts:
# a message, typing, another message), as people chat. Fewer, busier chats would let one Refresh
# collect many triggers' events (coalescing) and flatter every per-trigger figure.
CHATS_PER_EVENT_S = 2.0
MIN_CHATS = 200


def chats_for(rate: float) -> int:
    return max(MIN_CHATS, round(CHATS_PER_EVENT_S * rate))


class ReliableLoad:
    """benchmarks/load.Gms driving the pipeline benchmark's chats at `rate` triggers/s until stopped.
    `store_only`: no worker will Refresh, so Chat Server must not resend (each resend is a push the
    window would count as a stored trigger of its own)."""

    def __init__(
        self, chat_server: ChatServer, port: int, rate: float, run_s: float, store_only: bool
    ) -> None:
        workload = Workload(rate=rate, duration_s=run_s, chats=chats_for(rate))
        if store_only:
            workload = replace(workload, resend_attempts=0)
        self.gms = Gms(chat_server, port, workload)
        self.gms.wait_ready()
        self.thread = threading.Thread(
            target=self.gms.drive, args=(time.monotonic() + run_s,), name="gms-drive", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> list[Acked]:
        self.thread.join(60)
        offset = time.monotonic() - time.time()  # the senders time pushes with the wall clock
        records = self.gms.stop()
        # SendRecord: (session, index, attempt, position, duplicate, dispatched, sent_at, replied,
        # status, ...)
        return [(r[6] + offset, "trigger", 1) for r in records if r[8] == 200]


def _payload_node(push_url: str, rate: float, seed: int, stop: Any, results: Connection) -> None:
    """One GMS node of payload chats: a simulator scenario with its own Chat API (payload chats are
    never refreshed; the Chat API only takes the customers' messages), until `stop` is set."""
    from simulator.scenario import ScenarioConfig, run_scenario

    config = ScenarioConfig(
        chats=chats_for(rate),
        events_per_chat=40,
        rate=rate,
        mode="payload",
        forever=True,
        settle_timeout_s=1.0,
        seed=seed,
    )
    report = run_scenario(push_url, config, stop=stop)
    acked = [(r.at, "payload", len(r.indexes)) for c in report.chats for r in c.push_log if r.acked]
    results.send(acked)
    results.close()


class PayloadLoad:
    """PAYLOAD_NODES processes, each one sequential GMS node of payload chats, `rate` events/s in all."""

    def __init__(self, push_url: str, rate: float) -> None:
        self.stopping = _SPAWN.Event()
        self.nodes: list[tuple[Any, Connection]] = []
        for seed in range(PAYLOAD_NODES):
            receive, send = _SPAWN.Pipe(duplex=False)
            args = (push_url, rate / PAYLOAD_NODES, seed + 1, self.stopping, send)
            process = _SPAWN.Process(target=_payload_node, args=args, daemon=True)
            self.nodes.append((process, receive))

    def start(self) -> None:
        for process, _ in self.nodes:
            process.start()

    def stop(self) -> list[Acked]:
        self.stopping.set()
        acked: list[Acked] = []
        for process, results in self.nodes:
            if results.poll(60):
                acked.extend(results.recv())
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
        return acked
