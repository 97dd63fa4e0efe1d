"""GET /devices/{deviceId}/events: a device's Redis stream as Server-Sent Events, live and resumable.

Each open stream holds one Redis connection of its own (a pool separate from the `/push` one, so
the hot path never waits behind a stream), blocked in XREAD on that device's stream. A shared reader
fanning one XREAD over many streams out to the clients would use fewer connections, but it has to
interrupt its blocked read whenever a client joins or leaves, and buffer for every client slower than
the fastest (or drop it). Per-stream connections keep each stream's position, resume and gap check
its own, make a slow client throttle nobody but itself (its next read is not sent before its last
message is written: back-pressure, no buffer), and cost an idle socket each: SSE_MAX_CONNECTIONS
bounds them per process, and Redis's maxclients (10,000 by default) must cover them.

The stream is read in order from the client's resume point (`Last-Event-ID` header, else
`?lastEventId=`, else the start of what the stream holds), so nothing is lost or repeated across
reconnects. When entries after the resume point were trimmed away (the resume point is older than
the stream's first entry), an `event: gap` message comes first. SSE framing, heartbeats, disconnect
detection, slow-send timeouts and ending streams at server shutdown come from sse-starlette.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ingress.replies import error_body
from shared import device_tokens, keys
from shared.redis_clients import async_client
from shared.settings import Settings

log = logging.getLogger(__name__)

# Entries per read: bounds what one read holds in memory (an entry is at most a push's size).
READ_BATCH = 100
# A blocked XREAD returns empty after this long and is issued again: the socket timeout sits just
# above it, so a Redis that vanished without closing the connection is noticed within seconds.
READ_BLOCK_MS = 10_000
READ_MARGIN_S = 5.0
CONNECT_TIMEOUT_S = 1.0
# How long the last, empty chunk of a stream that was cut short may wait for the client's socket.
FINAL_SEND_S = 1.0
# A client's resume point: a Redis stream id, `ms-seq` or `ms` alone (what this endpoint sends as `id:`).
_STREAM_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
_U64 = 2**64

Entry = tuple[bytes, list[bytes]]  # (id, [field, value, field, value, ...]) as Redis answers XRANGE


def _json_error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, detail), status, headers=headers, media_type="application/json")


def parse_stream_id(value: str) -> tuple[int, int] | None:
    """A stream id as (ms, seq), or None when `value` is not one."""
    match = _STREAM_ID.fullmatch(value)
    if not match:
        return None
    ms, seq = int(match[1]), int(match[2] or 0)
    return (ms, seq) if ms < _U64 and seq < _U64 else None


def bearer_or_query_token(request: Request) -> str | None:
    """The device token: `Authorization: Bearer`, else exactly one `?token=` (EventSource cannot set
    headers). Several query tokens in one request are refused: one request, one guess."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    tokens = request.query_params.getlist("token")
    return tokens[0] if len(tokens) == 1 and tokens[0] else None


def encode_entry(entry_id: bytes, fields: list[bytes]) -> bytes:
    """One SSE message: `id:` the entry id, `data:` {"type", "sessionId", "index"?, "data"} with the
    event JSON spliced in as JSON (not a string of it). No `event:` line, so `onmessage` gets it."""
    values = dict(zip(fields[::2], fields[1::2], strict=False))
    message: dict[str, Any] = {"type": values.get(b"type", b"").decode()}
    if b"sessionId" in values:
        message["sessionId"] = values[b"sessionId"].decode()
    if b"index" in values:
        message["index"] = int(values[b"index"])
    message["data"] = msgspec.Raw(values.get(b"data", b"null"))
    # A line break inside JSON is whitespace (strings cannot hold a raw one), and in SSE it would end
    # the `data:` line: a space keeps the JSON equal and the message one line.
    body = msgspec.json.encode(message).replace(b"\r", b" ").replace(b"\n", b" ")
    return b"id: " + entry_id + b"\ndata: " + body + b"\n\n"


def gap_message(resume_id: str, first_id: bytes) -> bytes:
    """`event: gap`: entries after `resume_id` were trimmed away; the stream goes on at `first_id`.
    It has no `id:`, so a client that drops right after it resumes from the same point (and is told
    again)."""
    data = msgspec.json.encode({"lastEventId": resume_id, "firstId": first_id.decode()})
    return b"event: gap\ndata: " + data + b"\n\n"


class _Reader:
    """One stream's own Redis connection: the catch-up read with its gap check, and the blocked read."""

    def __init__(self, pool: aioredis.ConnectionPool, key: str) -> None:
        self.pool = pool
        self.key = key
        self.conn: AbstractConnection | None = None
        self.busy = False  # a command was sent and its reply not read: the connection is unusable

    async def _call(self, *commands: tuple[Any, ...]) -> list[Any]:
        if self.conn is None:
            self.conn = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        self.busy = True
        await self.conn.send_packed_command(self.conn.pack_commands(commands))
        replies = [await self.conn.read_response() for _ in commands]
        self.busy = False
        return replies

    async def catch_up(self, cursor: tuple[int, int] | None) -> tuple[list[Entry], bytes | None]:
        """Up to READ_BATCH entries after `cursor` (None: from the start), and the stream's first id
        when entries after `cursor` may have been trimmed. The first id is read after the entries (one
        round trip, in order): trimming only moves it forward, so a trim that took an entry before the
        read always shows, and one after it can only report a gap that was not (never the reverse)."""
        start = "-" if cursor is None else f"({cursor[0]}-{cursor[1]}"
        entries, first = await self._call(
            ("XRANGE", self.key, start, "+", "COUNT", READ_BATCH), ("XRANGE", self.key, "-", "+", "COUNT", 1)
        )
        if cursor is None or cursor == (0, 0) or not first:
            return entries, None
        first_id: bytes = first[0][0]
        oldest = parse_stream_id(first_id.decode())
        return entries, first_id if oldest is not None and oldest > cursor else None

    async def wait(self, cursor: tuple[int, int] | None) -> list[Entry]:
        """Entries after `cursor`, blocking until there are some (empty after READ_BLOCK_MS)."""
        last = "0-0" if cursor is None else f"{cursor[0]}-{cursor[1]}"
        (reply,) = await self._call(
            ("XREAD", "COUNT", READ_BATCH, "BLOCK", READ_BLOCK_MS, "STREAMS", self.key, last)
        )
        if not reply:
            return []
        # RESP3 (redis-py's default from 8.0) answers a map of key -> entries, RESP2 a list of pairs.
        entries: list[Entry] = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        return entries

    async def close(self) -> None:
        """Back to the pool; a connection left mid-command (cancelled while blocked) is closed first.
        Shielded: it runs while the response's task group is being cancelled."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        with anyio.CancelScope(shield=True):
            if self.busy:
                await conn.disconnect(nowait=True)
            await self.pool.release(conn)


class _EventStream(EventSourceResponse):
    """The SSE response, which gives back its connection slot and Redis connection however it ends:
    finished, client gone, too slow (send timeout), server shutdown, or HEAD (never started)."""

    def __init__(
        self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], settings: Settings
    ) -> None:
        super().__init__(
            content,
            ping=settings.sse_heartbeat_s,
            sep="\n",
            ping_message_factory=lambda: ServerSentEvent(comment="heartbeat", sep="\n"),
            send_timeout=settings.sse_send_timeout_s,
        )
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"started": False, "ended": False}

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["ended"] = True
            await send(message)

        try:
            await super().__call__(scope, receive, tracked)
        except SendTimeoutError:
            log.info("device stream dropped: the client took no message for SSE_SEND_TIMEOUT_S")
        finally:
            await self.on_close()
        if state["started"] and not state["ended"]:
            # Cut short (server shutdown, or a client too slow): end the response properly, so the
            # client sees a clean end and reconnects, and the server logs no error. Bounded: a stalled
            # client's socket takes nothing more, and then the server closes the connection.
            with contextlib.suppress(OSError, RuntimeError), anyio.move_on_after(FINAL_SEND_S):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


class DeviceStreams:
    """The endpoint, with the per-process and per-device bounds on open streams."""

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        """`client`: whose connection pool the streams take their connections from (its own, not the
        `/push` client's); by default one of the relay's primary with the timeouts above."""
        self.settings = settings
        self.secrets = (
            device_tokens.signing_keys(settings.device_token_secret) if settings.device_token_secret else ()
        )
        self.client = client or async_client(
            settings,  # REDIS_URL, or the primary the Sentinels name (followed through a failover)
            max_connections=settings.sse_max_connections,
            socket_timeout=READ_BLOCK_MS / 1000 + READ_MARGIN_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
        )
        self.pool = self.client.connection_pool
        self.open = 0
        self.per_device: dict[str, int] = {}
        # sse-starlette logs every message body at DEBUG: chat content has no place in logs.
        logging.getLogger("sse_starlette").setLevel(logging.INFO)

    async def handle(self, request: Request) -> Response:
        if not self.secrets:
            return _json_error(404, "not_found", "device streams are disabled (DEVICE_TOKEN_SECRET unset)")
        device_id = request.path_params["device_id"]
        token = bearer_or_query_token(request)
        holder = device_tokens.verify(self.secrets, token, time.time()) if token else None
        if holder is None:
            return _json_error(401, "unauthorized", "missing, invalid or expired device token")
        if holder != device_id:
            return _json_error(403, "forbidden", "this device token is for another device")
        resume = request.headers.get("last-event-id") or request.query_params.get("lastEventId") or ""
        cursor = parse_stream_id(resume) if resume else None
        if resume and cursor is None:
            return _json_error(400, "invalid_last_event_id", "Last-Event-ID must be a stream id (ms-seq)")
        if self.open >= self.settings.sse_max_connections:
            return _json_error(
                503,
                "too_many_streams",
                "this ingress holds SSE_MAX_CONNECTIONS streams",
                {"Retry-After": "5"},
            )
        if self.per_device.get(device_id, 0) >= self.settings.sse_device_max_connections:
            return _json_error(429, "too_many_device_streams", "this device has the most streams allowed")
        self._take(device_id)
        reader = _Reader(self.pool, keys.stream(device_id))

        async def close() -> None:
            try:
                await reader.close()
            finally:
                self._give_back(device_id)

        try:
            entries, gap = await reader.catch_up(cursor)
        except (RedisError, OSError, TimeoutError):
            await close()
            return _json_error(503, "redis_unavailable", "Redis is unreachable")
        except BaseException:
            await close()  # the slot and the connection go back whatever happened
            raise
        return _EventStream(
            self._events(reader, device_id, resume, cursor, entries, gap), close, self.settings
        )

    async def _events(
        self,
        reader: _Reader,
        device_id: str,
        resume: str,
        cursor: tuple[int, int] | None,
        entries: list[Entry],
        gap: bytes | None,
    ) -> AsyncIterator[bytes]:
        """Catch up in batches (each checked for a gap), then block for what comes next. The blocked
        read is issued only right after a catch-up found the end, so no slow send sits between a gap
        check and the read it covers."""
        try:
            while True:
                if gap is not None:
                    yield gap_message(resume, gap)
                for entry_id, fields in entries:
                    yield encode_entry(entry_id, fields)
                    cursor = parse_stream_id(entry_id.decode())
                    resume = entry_id.decode()
                if len(entries) < READ_BATCH:
                    woke: list[Entry] = []
                    while not woke:
                        woke = await reader.wait(cursor)
                    for entry_id, fields in woke:
                        yield encode_entry(entry_id, fields)
                        cursor = parse_stream_id(entry_id.decode())
                        resume = entry_id.decode()
                entries, gap = await reader.catch_up(cursor)
        except (RedisError, OSError, TimeoutError):
            # The client's EventSource reconnects with the last id it got: nothing is lost.
            log.warning("device stream ended: Redis is unreachable", extra={"deviceId": device_id})

    def _take(self, device_id: str) -> None:
        self.open += 1
        self.per_device[device_id] = self.per_device.get(device_id, 0) + 1

    def _give_back(self, device_id: str) -> None:
        self.open -= 1
        left = self.per_device[device_id] - 1
        if left:
            self.per_device[device_id] = left
        else:
            del self.per_device[device_id]

    async def close(self) -> None:
        await self.client.aclose()
