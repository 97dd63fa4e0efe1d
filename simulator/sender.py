"""The push side of the simulated GMS node: one sequential customhttp sender with Chat Server resends.

Like a GMS node it POSTs one push at a time on one keep-alive connection; the next leaves only after
the reply to the previous one. In reliable mode it also plays Chat Server: a trigger not acknowledged by
a Refresh within `resend_delay_s` is sent again with `notify-attempt` + 1, up to `resend_attempts` times.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from types import TracebackType
from typing import Any, Literal, NamedTuple

import httpx
import msgspec

from simulator.transcript import Chat, ChatStore, Mode, PendingTrigger, now_ms

PushKind = Literal["trigger", "payload", "wakeup"]
WAKEUP_TEXT = "dummy message"
_IDLE_POLL_S = 0.05


class PushRecord(msgspec.Struct, kw_only=True):
    """One POST to the push URL and how it was answered."""

    chat_id: str
    kind: PushKind
    indexes: list[int]
    at: float  # time.monotonic() just before the POST
    position: int | None = None  # trigger notify-position
    attempt: int | None = None  # trigger notify-attempt
    resend: bool = False
    duplicate: bool = False
    as_string: bool = False  # payload `message` sent as a string holding JSON
    status: int | None = None  # HTTP status; None on a transport error
    error: str | None = None
    latency_ms: float = 0.0

    @property
    def acked(self) -> bool:
        return self.status == 200


class PushStats(msgspec.Struct, kw_only=True):
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    resends: int = 0
    duplicates: int = 0
    exhausted: int = 0  # triggers dropped after the last resend went unacknowledged


class _ChatInfo(NamedTuple):
    chat_id: str
    mode: Mode
    device_id: str
    user_id: str
    secure_key: str
    cometd_key: str
    flex_secure_key: bool
    payload_as_string: bool | None


class _Outgoing(NamedTuple):
    chat: _ChatInfo
    kind: PushKind
    events: list[dict[str, Any]]
    chat_ended: bool
    next_position: int
    removed: bool = False  # reliable: the customer left, send notify-position -1


class PushSender:
    """Subscribes to a ChatStore and pushes every new event to `push_url`, sequentially."""

    def __init__(
        self,
        push_url: str,
        store: ChatStore,
        *,
        resend_delay_s: float = 15.0,
        resend_attempts: int = 3,
        duplicate_rate: float = 0.0,
        string_message_rate: float = 0.5,
        timeout_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.push_url = push_url
        self.store = store
        self.resend_delay_s = resend_delay_s
        self.resend_attempts = resend_attempts
        self.duplicate_rate = duplicate_rate
        self.string_message_rate = string_message_rate
        self._timeout_s = timeout_s
        self._rng = rng or random.Random()
        self._queue: queue.Queue[_Outgoing] = queue.Queue()
        self._lock = threading.Lock()
        self._records: list[PushRecord] = []
        self._exhausted: dict[str, int] = {}
        self._chats: dict[str, _ChatInfo] = {}
        self._busy = 0  # queued items plus resend passes in progress
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.store.subscribe(self._on_events)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="push-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop at once; queued pushes and pending resends are dropped."""
        self.store.unsubscribe(self._on_events)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout_s + 5)
            self._thread = None

    def __enter__(self) -> PushSender:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def idle(self, *, include_pending: bool = True) -> bool:
        """Nothing queued or being sent, and (by default) no trigger waiting for its Refresh."""
        with self._lock:
            if self._busy:
                return False
        return not include_pending or self.store.pending_count() == 0

    def wait_idle(self, timeout_s: float, *, include_pending: bool = True) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.idle(include_pending=include_pending):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # Results ---------------------------------------------------------------------------------------

    def records(self, chat_id: str | None = None) -> list[PushRecord]:
        with self._lock:
            return [r for r in self._records if chat_id is None or r.chat_id == chat_id]

    def stats(self, chat_id: str | None = None) -> PushStats:
        records = self.records(chat_id)
        with self._lock:
            exhausted = sum(n for c, n in self._exhausted.items() if chat_id is None or c == chat_id)
        return PushStats(
            sent=len(records),
            acked=sum(1 for r in records if r.acked),
            rejected=sum(1 for r in records if not r.acked),
            resends=sum(1 for r in records if r.resend and not r.duplicate),
            duplicates=sum(1 for r in records if r.duplicate),
            exhausted=exhausted,
        )

    # Producing pushes ------------------------------------------------------------------------------

    def _on_events(self, chat: Chat, events: list[dict[str, Any]]) -> None:
        """Store listener (runs under the store lock): queue the pushes these events cause."""
        if not chat.device_id:
            return  # no push subscription
        info = _ChatInfo(
            chat.chat_id,
            chat.mode,
            chat.device_id,
            chat.user_id,
            chat.secure_key,
            chat.cometd_key,
            chat.flex_secure_key,
            chat.payload_as_string,
        )
        items: list[_Outgoing]
        if chat.mode == "payload":
            items = [_Outgoing(info, "payload", events, chat.ended, chat.next_position)]
        else:
            kind: PushKind = "trigger" if chat.mode == "reliable" else "wakeup"
            items = [_Outgoing(info, kind, [e], chat.ended, e["index"] + 1) for e in events]
            if kind == "trigger" and any(_customer_left(e) for e in events):
                items.append(_Outgoing(info, kind, [events[-1]], True, chat.next_position, removed=True))
        with self._lock:
            self._chats[chat.chat_id] = info
            self._busy += len(items)
        for item in items:
            self._queue.put(item)

    def _run(self) -> None:
        with httpx.Client(timeout=self._timeout_s, limits=httpx.Limits(max_connections=1)) as client:
            while not self._stop.is_set():
                self._resend_due(client)
                try:
                    item = self._queue.get(timeout=self._wait_s())
                except queue.Empty:
                    continue
                try:
                    self._send_item(client, item)
                finally:
                    with self._lock:
                        self._busy -= 1

    def _wait_s(self) -> float:
        due = self.store.next_due(self.resend_delay_s)
        if due is None:
            return _IDLE_POLL_S
        return min(max(due - time.monotonic(), 0.001), _IDLE_POLL_S)

    def _resend_due(self, client: httpx.Client) -> None:
        with self._lock:
            self._busy += 1
        try:
            for pending in self.store.take_due(time.monotonic(), self.resend_delay_s):
                if self._stop.is_set():
                    return
                if pending.attempt >= self.resend_attempts:
                    with self._lock:
                        self._exhausted[pending.chat_id] = self._exhausted.get(pending.chat_id, 0) + 1
                    continue
                with self._lock:
                    info = self._chats[pending.chat_id]
                self._trigger(client, info, pending.position, pending.index, pending.attempt + 1, resend=True)
        finally:
            with self._lock:
                self._busy -= 1

    def _send_item(self, client: httpx.Client, item: _Outgoing) -> None:
        info, index = item.chat, item.events[-1]["index"]
        if item.kind == "trigger":
            if item.removed:
                self._trigger(client, info, -1, index, 0, resend=False, chat_ended=True)
            else:
                position = self.store.acked_position(info.chat_id)
                self._trigger(client, info, position, index, 0, resend=False, chat_ended=item.chat_ended)
        elif item.kind == "wakeup":
            body = {"deviceId": info.device_id, "message": WAKEUP_TEXT}
            self._post(client, body, PushRecord(chat_id=info.chat_id, kind="wakeup", indexes=[index], at=0))
        else:
            message: dict[str, Any] = {
                "messages": item.events,
                "chatEnded": item.chat_ended,
                "chatId": info.chat_id,
                "nextPosition": item.next_position,
            }
            as_string = info.payload_as_string
            if as_string is None:
                as_string = self._rng.random() < self.string_message_rate
            encoded: Any = msgspec.json.encode(message).decode() if as_string else message
            record = PushRecord(
                chat_id=info.chat_id,
                kind="payload",
                indexes=[e["index"] for e in item.events],
                at=0,
                as_string=as_string,
            )
            self._post(client, {"deviceId": info.device_id, "message": encoded}, record)

    def _trigger(
        self,
        client: httpx.Client,
        info: _ChatInfo,
        position: int,
        index: int,
        attempt: int,
        *,
        resend: bool,
        chat_ended: bool = False,
    ) -> None:
        user_data = {
            "notify-position": str(position),
            "notify-attempt": str(attempt),
            "session-id": info.chat_id,
            "user-id": info.user_id,
        }
        if info.flex_secure_key:
            user_data["secure-key"] = info.secure_key
        event = {
            "index": index,
            "type": "PushUrl",
            "from": {"participantId": 0},
            "text": "PUSH-NOTIFICATION",
            "utcTime": now_ms(),
            "userData": user_data,
        }
        message = {
            "messages": [event],
            "chatId": "deprecated",
            "userId": "deprecated",
            "secureKey": info.cometd_key,  # CometD-only; a relay must never use it for REST calls
            "chatEnded": chat_ended,
        }
        body = {"deviceId": info.device_id, "message": message}

        def record(duplicate: bool) -> PushRecord:
            return PushRecord(
                chat_id=info.chat_id,
                kind="trigger",
                indexes=[index],
                at=0,
                position=position,
                attempt=attempt,
                resend=resend,
                duplicate=duplicate,
            )

        sent_at = time.monotonic()
        # Pending before the POST leaves: a relay may refresh before its reply reaches us.
        if position != -1:  # the customer is gone after -1: nobody to resend to
            self.store.add_pending(PendingTrigger(info.chat_id, position, index, attempt, sent_at))
        self._post(client, body, record(False))
        if self.duplicate_rate > 0 and self._rng.random() < self.duplicate_rate:
            self._post(client, body, record(True))

    def _post(self, client: httpx.Client, body: dict[str, Any], record: PushRecord) -> None:
        """POST one push and record the reply."""
        content = msgspec.json.encode(body)
        record.at = time.monotonic()
        try:
            response = client.post(
                self.push_url, content=content, headers={"Content-Type": "application/json"}
            )
            record.status = response.status_code
        except httpx.HTTPError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        record.latency_ms = (time.monotonic() - record.at) * 1000
        with self._lock:
            self._records.append(record)


def _customer_left(event: dict[str, Any]) -> bool:
    sender = event.get("from") or {}
    return event.get("type") == "ParticipantLeft" and sender.get("type") == "Client"
