"""A minimal Redis client for GMS's reply path: one write, its replies, on an asyncio Protocol.

redis-py's asyncio connection goes through StreamReader/StreamWriter, a Task per bounded write
(`wait_for`) and a timeout context per read; on the reply path that costs more than the Lua call
itself (measured ~30 us a push). Here a request is one `transport.write`, hiredis parses the replies in
`data_received`, and one timer bounds the whole exchange. Plain TCP only: the store keeps redis-py's
pool for TLS, unix sockets and Sentinel-managed primaries.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError


def _reply_error(message: str) -> Exception:
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


def pack(*args: str | bytes | int) -> bytes:
    """One RESP command (the bytes redis-py's pack_command sends for str, int and bytes arguments)."""
    values = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n%s" % (len(values), b"".join([b"$%d\r\n%s\r\n" % (len(v), v) for v in values]))


class RedisLink(asyncio.Protocol):
    """One connection, one exchange at a time (the store holds a link per concurrent call). Error
    replies come back as exception objects, so that every reply of a pipelined write is read."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=_reply_error)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[list[Any]] | None = None
        self._wanted = 0
        self._replies: list[Any] = []

    async def connect(self, kwargs: dict[str, Any], timeout_s: float) -> None:
        """(Re)connect, then AUTH and SELECT as redis-py would from the same connection kwargs."""
        self.close()
        self._reader = hiredis.Reader(replyError=_reply_error)
        host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
        password, username, db = kwargs.get("password"), kwargs.get("username"), kwargs.get("db", 0)
        handshake = []
        if password is not None:
            handshake.append(pack("AUTH", username, password) if username else pack("AUTH", password))
        if db:
            handshake.append(pack("SELECT", db))
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.get_running_loop().create_connection(lambda: self, host, port)
            if handshake:
                for reply in await self.call(b"".join(handshake), len(handshake), timeout_s):
                    if isinstance(reply, Exception):
                        raise reply
        except BaseException:
            self.close()
            raise

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def call(self, request: bytes, replies: int, timeout_s: float) -> list[Any]:
        """Write `request` (one or more packed commands) and return its `replies` replies."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionError("Redis connection closed")
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._wanted, self._replies = replies, []
        transport.write(request)
        timer = loop.call_later(timeout_s, self._expire)
        try:
            got: list[Any] = await waiter
            return got
        except BaseException:
            self.close()  # timed out, cancelled or lost mid-exchange: a late reply must not answer the next
            raise
        finally:
            timer.cancel()
            self._waiter = None

    def _expire(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TimeoutError("Timeout reading from Redis"))
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._replies.append(reply)
        waiter = self._waiter
        if waiter is not None and not waiter.done() and len(self._replies) >= self._wanted:
            waiter.set_result(self._replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("Redis closed the connection"))
