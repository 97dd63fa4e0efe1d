"""The push side of the simulated GMS node: one sequential customhttp sender with Chat Server resends.

Like a GMS node it POSTs one push at a time on one keep-alive connection; the next leaves only after
the reply to the previous one. In reliable mode it also plays Chat Server: a trigger not acknowledged by
a Refresh within `resend_delay_s` is sent again with `notify-attempt` + 1, up to `resend_attempts` times.
A trigger's notify-position and `app-dbid` are read when Chat Server sends it; `late_rate` of the
triggers are then held back `late_delay_ms` on the way (on a node), and later pushes overtake them.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import random
import threading
import time
from types import TracebackType
from typing import Any, Literal, NamedTuple

import httpx
import msgspec

from shared.clock import now_ms
from simulator.transcript import Chat, ChatStore, Mode, PendingTrigger, pushed_events

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
    app_dbid: str | None = None  # trigger `app-dbid` (flex_app_dbid chats): the alias when it was sent
    late: bool = False  # held back late_delay_ms between Chat Server and the POST
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
    triggers: int = 0  # fresh triggers (attempt 0, the -1 ones too), not counting exact duplicates
    resends: int = 0
    duplicates: int = 0
    late: int = 0  # pushes held back late_delay_ms (duplicates of late triggers included)
    exhausted: int = 0  # triggers dropped after the last resend went unacknowledged


class _ChatInfo(NamedTuple):
    chat_id: str
    mode: Mode
    device_id: str
    user_id: str
    secure_key: str
    cometd_key: str
    flex_secure_key: bool
    flex_app_dbid: bool
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
        late_rate: float = 0.0,
        late_delay_ms: int = 200,
        timeout_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.push_url = push_url
        self.store = store
        self.resend_delay_s = resend_delay_s
        self.resend_attempts = resend_attempts
        self.duplicate_rate = duplicate_rate
        self.string_message_rate = string_message_rate
        self.late_rate = late_rate
        self.late_delay_ms = late_delay_ms
        self._timeout_s = timeout_s
        self._rng = rng or random.Random()
        self._queue: queue.Queue[_Outgoing] = queue.Queue()
        self._lock = threading.Lock()
        self._records: list[PushRecord] = []
        self._exhausted: dict[str, int] = {}
        self._chats: dict[str, _ChatInfo] = {}
        self._busy = 0  # queued items, held late pushes and resend passes in progress
        # Late pushes, due time first: (time.monotonic() due, sequence, body, records). Sender thread only.
        self._late: list[tuple[float, int, bytes, list[PushRecord]]] = []
        self._late_seq = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.store.subscribe(self._on_events)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="push-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop at once; queued pushes, held late pushes and pending resends are dropped."""
        self.store.unsubscribe(self._on_events)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout_s + 5)
            self._thread = None
        with self._lock:
            self._busy -= len(self._late)
            self._late.clear()

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
            triggers=sum(1 for r in records if r.kind == "trigger" and not r.resend and not r.duplicate),
            resends=sum(1 for r in records if r.resend and not r.duplicate),
            duplicates=sum(1 for r in records if r.duplicate),
            late=sum(1 for r in records if r.late),
            exhausted=exhausted,
        )

    # Producing pushes ------------------------------------------------------------------------------

    def _on_events(self, chat: Chat, events: list[dict[str, Any]]) -> None:
        """Store listener (runs under the store lock): queue the pushes these events cause."""
        events = pushed_events(chat, events)
        if not chat.device_id or not events:
            return  # no push subscription, or only the customer's own events and it asked not to get them
        info = _ChatInfo(
            chat.chat_id,
            chat.mode,
            chat.device_id,
            chat.user_id,
            chat.secure_key,
            chat.cometd_key,
            chat.flex_secure_key,
            chat.flex_app_dbid,
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
                self._send_late_due(client)
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
        dues = [self.store.next_due(self.resend_delay_s), self._late[0][0] if self._late else None]
        due = min((d for d in dues if d is not None), default=None)
        if due is None:
            return _IDLE_POLL_S
        return min(max(due - time.monotonic(), 0.001), _IDLE_POLL_S)

    def _send_late_due(self, client: httpx.Client) -> None:
        """POST the held-back pushes whose time has come, one at a time like any other push."""
        while self._late and self._late[0][0] <= time.monotonic() and not self._stop.is_set():
            _due, _seq, content, records = heapq.heappop(self._late)
            try:
                for record in records:
                    self._post(client, content, record)
            finally:
                with self._lock:
                    self._busy -= 1

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
                self._trigger(client, info, pending.index, pending.attempt + 1, pending.position, resend=True)
        finally:
            with self._lock:
                self._busy -= 1

    def _send_item(self, client: httpx.Client, item: _Outgoing) -> None:
        info, index = item.chat, item.events[-1]["index"]
        if item.kind == "trigger":
            if item.removed:
                self._trigger(client, info, index, 0, -1, resend=False, chat_ended=True)
            else:
                # notify-position: what the client has not acknowledged yet, read now, at send time.
                self._trigger(client, info, index, 0, None, resend=False, chat_ended=item.chat_ended)
        elif item.kind == "wakeup":
            body = {"deviceId": info.device_id, "message": WAKEUP_TEXT}
            record = PushRecord(chat_id=info.chat_id, kind="wakeup", indexes=[index], at=0)
            self._post(client, msgspec.json.encode(body), record)
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
            self._post(client, msgspec.json.encode({"deviceId": info.device_id, "message": encoded}), record)

    def _trigger(
        self,
        client: httpx.Client,
        info: _ChatInfo,
        index: int,
        attempt: int,
        position: int | None,
        *,
        resend: bool,
        chat_ended: bool = False,
    ) -> None:
        """Chat Server sends a trigger now; `position` None: the acknowledged position at this moment.
        It is POSTed at once, or held back (late) and POSTed when due by the same sequential loop."""
        acked, alias = self.store.trigger_state(info.chat_id)
        position = acked if position is None else position
        user_data = {
            "notify-position": str(position),
            "notify-attempt": str(attempt),
            "session-id": info.chat_id,
            "user-id": info.user_id,
        }
        if info.flex_secure_key:
            user_data["secure-key"] = info.secure_key
        app_dbid = alias if info.flex_app_dbid else None
        if app_dbid is not None:
            user_data["app-dbid"] = app_dbid
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
        content = msgspec.json.encode({"deviceId": info.device_id, "message": message})
        late = self.late_rate > 0 and self._rng.random() < self.late_rate
        duplicate = self.duplicate_rate > 0 and self._rng.random() < self.duplicate_rate
        records = [
            PushRecord(
                chat_id=info.chat_id,
                kind="trigger",
                indexes=[index],
                at=0,
                position=position,
                attempt=attempt,
                resend=resend,
                duplicate=copy == 1,
                app_dbid=app_dbid,
                late=late,
            )
            for copy in range(2 if duplicate else 1)
        ]
        sent_at = time.monotonic()
        # Pending from the moment Chat Server sends it (before the POST leaves, and before a late push
        # reaches the relay): a Refresh arriving after this acknowledges it.
        if position != -1:  # the customer is gone after -1: nobody to resend to
            self.store.add_pending(PendingTrigger(info.chat_id, position, index, attempt, sent_at))
        if late:
            with self._lock:
                self._busy += 1
            due = sent_at + self.late_delay_ms / 1000
            heapq.heappush(self._late, (due, next(self._late_seq), content, records))
            return
        for record in records:
            self._post(client, content, record)

    def _post(self, client: httpx.Client, content: bytes, record: PushRecord) -> None:
        """POST one push and record the reply."""
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
