"""The ingress's only conversation with Redis: one Lua call per request, bounded in time.

At INGRESS_ACK=replicated the call is followed, in the same write on the same connection, by `WAIT 1
<REPLICA_ACK_TIMEOUT_MS>` (WAITAOF for replicated+fsynced): one round trip, and a push no replica
confirmed is answered 503 `not_replicated` (stored on the primary, not acknowledged: GMS resends).
"""

from __future__ import annotations

import asyncio
import time
from hashlib import sha1

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ingress.redis_link import RedisLink, pack
from shared.clock import now_ms
from shared.errors import NotReplicated, RedisUnavailable
from shared.ids import IdSource
from shared.models import Notification, Payload, SessionRegistration, Trigger
from shared.redis_clients import ack_command, acknowledged, afollow_primary, async_client
from shared.scripts import INTERFACES, Arg, ScriptSources
from shared.settings import Settings

# GMS must never hang on us: answer 503 well inside 250 ms when Redis is gone or stuck.
REDIS_DEADLINE_S = 0.2
# Most idle connections _call holds for itself (one per concurrent push; GMS nodes send one at a time).
_HELD_CONNECTIONS = 32
_MAX_LINKS = 256  # as the pool's max_connections
_TRIGGER, _PAYLOAD, _WAKEUP = (INTERFACES[f"ingest_{kind}"] for kind in ("trigger", "payload", "wakeup"))


class IngressStore:
    """Stores notifications and registrations for the workers."""

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client or async_client(  # REDIS_URL, or the primary the Sentinels name
            settings,
            socket_timeout=REDIS_DEADLINE_S,
            socket_connect_timeout=REDIS_DEADLINE_S / 4,
            retry_on_timeout=False,
            retry=None,
            max_connections=256,
        )
        self._idle: list[AbstractConnection] = []  # pool connections _call holds between calls
        pool = self.client.connection_pool
        # Plain TCP to one Redis: _call uses links of its own (ingress/redis_link.py, ~30 us a push
        # cheaper than redis-py's connection); TLS, unix sockets and Sentinel: the pool's connections.
        self._link_kwargs = pool.connection_kwargs if pool.connection_class is Connection else None
        self._links: list[RedisLink] = []  # idle links
        self._open_links = 0
        self.sources = ScriptSources.build(settings).sources
        self.shas = {name: sha1(source.encode()).hexdigest() for name, source in self.sources.items()}
        self.ids = IdSource()
        # WAIT / WAITAOF packed once (b"" for INGRESS_ACK=stored), written after the EVALSHA.
        ack = [str(a).encode() for a in ack_command(settings)]
        self._ack = (
            b"*%d\r\n%s" % (len(ack), b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in ack)) if ack else b""
        )
        # With Sentinel: held connections still reach the old primary after a planned failover (or
        # across a split) until Sentinel demotes it; look every SENTINEL_CHECK_MS, and after a failure.
        self._follows = bool(settings.redis_sentinels)
        self._next_look = 0.0
        self._looking: asyncio.Task[None] | None = None

    async def _call(self, script: str, args: list[str | bytes | int]) -> str:
        if self._link_kwargs is None:
            return await self._call_pool(script, args)
        request = self._evalsha(script, args) + self._ack  # the ack in the same write
        wanted = 2 if self._ack else 1
        try:
            replies = await self._on_link(request, wanted)
            if isinstance(replies[0], NoScriptError):  # Redis restarted or its scripts were flushed
                await self._on_link(pack("SCRIPT", "LOAD", self.sources[script]), 1)
                replies = await self._on_link(request, wanted)
            if isinstance(replies[0], Exception):  # e.g. OOM under noeviction: nothing was stored
                raise replies[0]
        except (RedisError, OSError, TimeoutError):
            raise RedisUnavailable("Redis is unreachable; the notification was not stored") from None
        return self._answer(replies[0], replies[1] if self._ack else None)

    async def _on_link(self, request: bytes, replies: int) -> list[object]:
        """One exchange on a held link (opened when none is idle, reconnected when closed)."""
        link = self._links.pop() if self._links else None
        if link is None:
            if self._open_links >= _MAX_LINKS:
                raise RedisError("too many concurrent Redis calls")
            link, self._open_links = RedisLink(), self._open_links + 1
        try:
            if not link.usable:
                await link.connect(self._link_kwargs or {}, REDIS_DEADLINE_S / 4)
            return await link.call(request, replies, REDIS_DEADLINE_S)
        finally:
            if len(self._links) < _HELD_CONNECTIONS:
                self._links.append(link)  # a closed one reconnects on its next call
            else:
                link.close()
                self._open_links -= 1

    def _evalsha(self, script: str, args: list[str | bytes | int]) -> bytes:
        """EVALSHA packed here (str, int or bytes arguments): ~2.5x cheaper than pack_command."""
        values = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        return b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n0\r\n%s" % (
            len(values) + 3,
            self.shas[script].encode(),
            b"".join([b"$%d\r\n%s\r\n" % (len(v), v) for v in values]),
        )

    def _answer(self, result: object, confirmed: object) -> str:
        """The script's outcome, unless INGRESS_ACK=replicated and no replica confirmed the write."""
        if self._ack and not acknowledged(self.settings, confirmed):
            self._look_for_primary(now=True)  # a moved primary leaves the old one without its replica
            raise NotReplicated(
                f"stored on the Redis primary, but no replica confirmed it within "
                f"{self.settings.replica_ack_timeout_ms} ms (INGRESS_ACK={self.settings.ingress_ack}): "
                "not acknowledged; send it again"
            )
        return result.decode() if isinstance(result, bytes) else str(result)

    async def _call_pool(self, script: str, args: list[str | bytes | int]) -> str:
        # On a connection of the client's pool that this store holds between calls (the pool still
        # bounds and closes it), sent and read directly: redis-py's per-command machinery (pool lock,
        # retry wrapper, observability hooks) costs ~30 us a call on GMS's reply path. The connection's
        # socket timeouts bound every step (connect, write, read) within the deadline; a failed step
        # disconnects it, and its next call reconnects.
        pool = self.client.connection_pool
        try:
            if self._idle:
                conn = self._idle.pop()
            else:  # redis-py leaves get_connection untyped
                conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                evalsha = self._evalsha(script, args)
                packed = [evalsha, self._ack] if self._ack else evalsha  # the ack in the same write
                await conn.send_packed_command(packed)
                try:
                    result, confirmed = await self._replies(conn)
                except NoScriptError:  # Redis restarted, failed over, or its scripts were flushed
                    await conn.send_packed_command(conn.pack_command("SCRIPT", "LOAD", self.sources[script]))
                    await conn.read_response()
                    await conn.send_packed_command(packed)
                    result, confirmed = await self._replies(conn)
            finally:
                if len(self._idle) < _HELD_CONNECTIONS:
                    self._idle.append(conn)
                else:  # after a burst of concurrent pushes: back to the pool, for /readyz and /metrics
                    await pool.release(conn)
        except (RedisError, OSError, TimeoutError):
            self._look_for_primary(now=True)
            raise RedisUnavailable("Redis is unreachable; the notification was not stored") from None
        if self._follows:
            self._look_for_primary()
        return self._answer(result, confirmed)

    async def _replies(self, conn: AbstractConnection) -> tuple[object, object]:
        """The script's reply and the ack's (None without one), both read even when the script's is an
        error, so that the connection stays in step."""
        try:
            result = await conn.read_response()
        except ResponseError:
            if self._ack:
                await conn.read_response()
            raise
        return result, (await conn.read_response() if self._ack else None)

    def _look_for_primary(self, now: bool = False) -> None:
        """With Sentinel, every SENTINEL_CHECK_MS (or at once, after a failure): in the background, ask
        the Sentinels where the primary is and disconnect the held connections that reach another
        node (they reconnect to the primary on their next call)."""
        if not self._follows or self._looking is not None or (not now and time.monotonic() < self._next_look):
            return
        self._next_look = time.monotonic() + self.settings.sentinel_check_ms / 1000
        self._looking = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        try:
            address = await afollow_primary(self.client)
            for conn in list(self._idle):
                host, port = getattr(conn, "host", None), getattr(conn, "port", None)
                if address is not None and host is not None and (str(host), int(port or 0)) != address:
                    await conn.disconnect()
        except (RedisError, OSError, TimeoutError):
            pass  # no Sentinel answers: the next push fails (503) and looks again
        finally:
            self._looking = None

    async def ingest(self, note: Notification) -> str:
        """Store one notification durably; returns the outcome (queued, duplicate, covered, ...)."""
        now = now_ms()
        if isinstance(note, Trigger):
            args = _TRIGGER.argv(
                {
                    "device": note.device_id,
                    "sid": note.session_id,
                    "now_ms": now,
                    "job_id": self.ids.new("drain"),
                    "position": note.position,
                    "attempt": note.attempt,
                    "user_id": note.user_id,
                    "secure_key": note.secure_key,
                    "app_dbid": note.app_dbid,
                }
            )
            return await self._call("ingest_trigger", args)
        if isinstance(note, Payload):
            rest: list[str | bytes | int] = []
            for event in note.events:
                rest += [event.index, bytes(event.raw)]
            named: dict[str, Arg] = {
                "device": note.device_id,
                "sid": note.session_id,
                "now_ms": now,
                "job_id": self.ids.new("drain"),
                "chat_ended": note.chat_ended,
                "alias": note.alias,
            }
            return await self._call("ingest_payload", _PAYLOAD.argv(named, rest))
        body = msgspec.json.encode({"deviceId": note.device_id, "text": note.text})
        args = _WAKEUP.argv(
            {"device": note.device_id, "now_ms": now, "job_id": self.ids.new("drain"), "body": body}
        )
        return await self._call("ingest_wakeup", args)

    async def register(self, session_id: str, reg: SessionRegistration) -> str:
        named: dict[str, Arg] = {
            "sid": session_id,
            "device": reg.deviceId,
            "user_id": reg.userId,
            "secure_key": reg.secureKey,
            "alias": None if reg.alias is None else str(reg.alias),
            "service": reg.service,
            "now_ms": now_ms(),
            "job_id": self.ids.new("drain"),
        }
        return await self._call("register", INTERFACES["register"].argv(named))

    async def forget(self, session_id: str) -> str:
        return await self._call("forget", INTERFACES["forget"].argv({"sid": session_id}))

    async def ping(self) -> bool:
        try:
            if self._link_kwargs is not None:  # readiness checks (and opens) the reply path's own link
                return (await self._on_link(pack("PING"), 1))[0] == b"PONG"
            return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        for link in self._links:
            link.close()
        self._links.clear()
        if self._looking is not None:
            await self._looking
        await self.client.aclose()
