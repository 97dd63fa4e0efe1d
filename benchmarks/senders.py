"""The GMS nodes: sender processes, each one sequential keep-alive HTTP/1.1 connection to the system
under test, timing every push with the wall clock."""

from __future__ import annotations

import contextlib
import heapq
import queue
import signal
import socket
import time
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import msgspec


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
