"""Every process's Redis clients, built in one place: from REDIS_URL, or through Redis Sentinel.

With REDIS_SENTINELS set, a client asks the Sentinels for the current primary of
REDIS_SENTINEL_MASTER each time it opens a connection (redis-py's SentinelConnectionPool), so a
process follows the primary through a failover with no restart: a connection that breaks (the old
primary died, or Sentinel killed the clients as it reconfigured it) or meets a READONLY reply (it
reached a demoted primary) is dropped, and the next one goes wherever the Sentinels point now. The
password, username, db and TLS of REDIS_URL still apply; its host and port are then unused. Scripts
reload themselves on NOSCRIPT (the new primary's script cache starts empty).
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.exceptions import RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.utils import SENTINEL

from shared.errors import ConfigError
from shared.settings import Settings

log = logging.getLogger("gms_relay.redis")

# A command that loses its connection is retried on a fresh one for about 0.6-1.3 s (50 ms doubling
# up to 500 ms, each jittered), and every retry's connect is itself retried so (redis-py nests the
# two): a worker-side command rides out a restart or a promotion of up to several seconds, and fails
# after ~10 s when Redis stays away (the worker's loop then waits for it, saying so).
FAILOVER_RETRIES = 5
FAILOVER_BACKOFF_BASE_S = 0.05
FAILOVER_BACKOFF_CAP_S = 0.5


# An idle or blocked connection (RQ's BLPOP waits minutes) to a primary whose host vanished gets no
# reset: TCP keepalive probes notice it in ~8 s, so the command fails over instead of hanging.
_KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}


def failover_retry() -> Retry:
    """The retry policy of worker-side clients (a new object each time: redis-py mutates its own)."""
    return Retry(EqualJitterBackoff(FAILOVER_BACKOFF_CAP_S, FAILOVER_BACKOFF_BASE_S), FAILOVER_RETRIES)


def no_retry() -> Retry:
    """For callers that must answer at once (a status line, a health check): one attempt."""
    return Retry(NoBackoff(), 0)


class SentinelRedis(redis.Redis):
    """A primary's client that, closed, also closes its connections to the Sentinels."""

    def close(self) -> None:
        super().close()
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if isinstance(manager, Sentinel):
            manager.close()


class AsyncSentinelRedis(aioredis.Redis):
    """The asyncio twin of SentinelRedis."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if isinstance(manager, AsyncSentinel):
            await manager.aclose()


# redis-py (8.1) reconnects a dropped connection inside `send_packed_command`, which goes straight to
# the address of its last connection: a SentinelManagedConnection asks the Sentinels only in
# `connect()`. So a command retried after the primary died, or the ingress's next push on a held
# connection, went back to the old primary. These ask the Sentinels on every reconnect.
#
# SentinelManagedConnection's sync `read_response` also defaults to disconnect_on_error=False (that of
# redis.Connection, and of the asyncio one, is True): a read cut short by an exception other than a
# connection error left the connection open, its reply still due, and it went back to the pool. RQ's
# SIGTERM handler raises StopRequested in its idle BLPOP (405 s): `register_death` then queued its
# pipeline behind that BLPOP on the same connection and hung (its replies would have been off by one,
# as after a job timeout's exception in a read). So a read cut short closes its connection here.
class FollowingConnection(SentinelManagedConnection):
    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # type: ignore[no-untyped-call]
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    def read_response(
        self,
        disable_decoding: Any = False,
        *,
        timeout: float | object = SENTINEL,
        disconnect_on_error: bool | None = True,
        push_request: bool | None = False,
    ) -> Any:
        return super().read_response(
            disable_decoding,
            timeout=timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )


class FollowingSSLConnection(FollowingConnection, SSLConnection):
    pass


class AsyncFollowingConnection(AsyncSentinelManagedConnection):
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]
        await super().send_packed_command(command, check_health)


class AsyncFollowingSSLConnection(AsyncFollowingConnection, AsyncSSLConnection):
    pass


def _primary_kwargs(settings: Settings, opts: dict[str, Any], classes: tuple[type, type]) -> dict[str, Any]:
    """REDIS_URL's credentials, db and TLS (not its host), the connection class (plain or TLS of
    `classes`), then the caller's options."""
    parsed: dict[str, Any] = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
    kwargs = {k: v for k, v in parsed.items() if k not in ("host", "port", "path")}
    tls = kwargs.pop("connection_class", None) is SSLConnection
    return {**kwargs, "connection_class": classes[tls], **opts}


def _sentinel_kwargs(settings: Settings, opts: dict[str, Any], retry: object) -> dict[str, Any]:
    """The Sentinels are asked within the primary's own timeouts, once each: a Sentinel that does not
    answer is skipped for the next one (redis-py asks them in turn), not retried."""
    kwargs: dict[str, Any] = {"password": settings.redis_sentinel_password, "retry": retry}
    for name in ("socket_timeout", "socket_connect_timeout"):
        if opts.get(name) is not None:
            kwargs[name] = opts[name]
    return kwargs


def sync_client(settings: Settings, **opts: Any) -> redis.Redis:
    """A client of the primary: `opts` are redis-py connection options (timeouts, pool size, retry).
    Without a `retry` it gets `failover_retry()`, and TCP keepalive probes unless told otherwise."""
    opts.setdefault("retry", failover_retry())
    if "socket_keepalive" not in opts:
        opts.update(socket_keepalive=True, socket_keepalive_options=dict(_KEEPALIVE))
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, **opts)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(settings.redis_sentinels), sentinel_kwargs=_sentinel_kwargs(settings, opts, no_retry())
    )
    client = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master,
        redis_class=SentinelRedis,
        **_primary_kwargs(settings, opts, (FollowingConnection, FollowingSSLConnection)),
    )
    assert isinstance(client, SentinelRedis)
    return client


def async_client(settings: Settings, **opts: Any) -> aioredis.Redis:
    """An asyncio client of the primary (the ingress's); `opts` as for `sync_client`, whose retry
    default does not apply: the ingress answers 503 at once rather than retry on GMS's time."""
    if not settings.redis_sentinels:
        return aioredis.Redis.from_url(settings.redis_url, **opts)
    sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
        list(settings.redis_sentinels),
        sentinel_kwargs=_sentinel_kwargs(settings, opts, AsyncRetry(NoBackoff(), 0)),
    )
    client = sentinel.master_for(
        settings.redis_sentinel_master,
        redis_class=AsyncSentinelRedis,
        **_primary_kwargs(settings, opts, (AsyncFollowingConnection, AsyncFollowingSSLConnection)),
    )
    assert isinstance(client, AsyncSentinelRedis)
    return client


def redis_location(url: str) -> str:
    """A Redis URL as log lines and messages may show it: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}").geturl()


def describe(settings: Settings) -> str:
    """Where the processes look for Redis, naming the variable an operator would fix."""
    if not settings.redis_sentinels:
        return f"{redis_location(settings.redis_url)} (REDIS_URL)"
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in settings.redis_sentinels)
    return f"master {settings.redis_sentinel_master!r} of the Sentinels {hosts} (REDIS_SENTINELS)"


def primary_url(settings: Settings) -> str:
    """REDIS_URL pointed at the primary the Sentinels name now (for commands an operator pastes, such as
    redis-cli's, that cannot ask Sentinel themselves); REDIS_URL itself without Sentinels."""
    if not settings.redis_sentinels:
        return settings.redis_url
    timeouts = {"socket_timeout": 1, "socket_connect_timeout": 1}
    with Sentinel(  # type: ignore[no-untyped-call]
        list(settings.redis_sentinels), sentinel_kwargs=_sentinel_kwargs(settings, timeouts, no_retry())
    ) as sentinel:
        host, port = sentinel.discover_master(settings.redis_sentinel_master)
    parts = urlsplit(settings.redis_url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return parts._replace(netloc=f"{userinfo}@{netloc}" if userinfo else netloc).geturl()


def follow_primary(client: redis.Redis) -> tuple[str, int] | None:
    """Ask the Sentinels where the primary is now; if it moved, the client's idle connections are
    dropped at once and busy ones when they come back to the pool (redis-py's SentinelConnectionPool
    does both), so its next commands go to the new primary. None for a client without Sentinel."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return None
    host, port = pool.get_master_address()  # type: ignore[no-untyped-call]
    return str(host), int(port)


async def afollow_primary(client: aioredis.Redis) -> tuple[str, int] | None:
    """`follow_primary` for an asyncio client. Connections a caller holds outside the pool (the
    ingress's) are its own to compare with the address returned."""
    pool = client.connection_pool
    if not isinstance(pool, AsyncSentinelConnectionPool):
        return None
    host, port = await pool.get_master_address()  # type: ignore[no-untyped-call]
    return str(host), int(port)


class PrimaryWatch(threading.Thread):
    """A daemon thread that makes sync clients follow a moved primary within SENTINEL_CHECK_MS,
    instead of when Sentinel demotes the old one (it does nothing without REDIS_SENTINELS). Busy
    connections finish their command first: closing one under its thread breaks redis-py (RQ's
    pubsub thread dies of it), and a command cut off after the old primary ran it, retried on a new
    one that had it replicated, would run twice. RQ's BLPOP, busy for minutes, is freed when Sentinel
    demotes the old primary (CLIENT KILL), or by TCP keepalive if that host is gone."""

    def __init__(self, settings: Settings, clients: list[redis.Redis]) -> None:
        super().__init__(name="primary-watch", daemon=True)
        self.clients = clients
        self.interval_s = settings.sentinel_check_ms / 1000
        self.stopped = threading.Event()
        self.enabled = bool(settings.redis_sentinels)

    def start(self) -> None:
        if self.enabled and self.ident is None:  # once, and only with Sentinel
            super().start()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            for client in self.clients:
                before = getattr(client.connection_pool, "master_address", None)
                try:
                    now = follow_primary(client)
                except (RedisError, OSError):
                    continue  # no Sentinel answers: the clients' own retries report it
                if now is not None and before is not None and tuple(before) != now:
                    log.warning("Redis primary moved", extra={"primary": f"{now[0]}:{now[1]}"})

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join(5)


def ack_command(settings: Settings) -> list[str | int]:
    """The command that confirms a write at INGRESS_ACK's level, sent right after it on the same
    connection (WAIT and WAITAOF count that connection's writes); empty for `stored`."""
    if settings.ingress_ack == "replicated":
        return ["WAIT", 1, settings.replica_ack_timeout_ms]
    if settings.ingress_ack == "replicated+fsynced":
        return ["WAITAOF", 1, 1, settings.replica_ack_timeout_ms]
    return []


def acknowledged(settings: Settings, reply: object) -> bool:
    """Whether `ack_command`'s reply confirms the level: WAIT answers the replicas that hold the write,
    WAITAOF [local fsyncs, replica fsyncs]."""
    if settings.ingress_ack == "replicated":
        return isinstance(reply, int) and reply >= 1
    if settings.ingress_ack == "replicated+fsynced":
        return isinstance(reply, list) and len(reply) == 2 and int(reply[0]) >= 1 and int(reply[1]) >= 1
    return True


def check_ack_supported(settings: Settings) -> None:
    """INGRESS_ACK=replicated+fsynced needs WAITAOF (Redis >= 7.2, not Debian bookworm's 7.0): refuse it
    at start-up when the primary lacks the command. A primary that does not answer yet is not a
    refusal (compose starts everything at once); the ingress then answers 503 until it does."""
    if settings.ingress_ack != "replicated+fsynced":
        return
    try:
        with sync_client(settings, socket_timeout=2, socket_connect_timeout=2, retry=no_retry()) as client:
            version = client.info("server").get("redis_version", "?")
            conn = client.connection_pool.get_connection()  # raw: redis-py's COMMAND parser fails on [nil]
            try:
                conn.send_command("COMMAND", "INFO", "waitaof")
                known = conn.read_response()
            finally:
                client.connection_pool.release(conn)
    except (RedisError, OSError):
        return
    if known == [None]:
        raise ConfigError(
            "INGRESS_ACK=replicated+fsynced needs WAITAOF (Redis >= 7.2); the primary at "
            f"{describe(settings)} runs Redis {version}: use INGRESS_ACK=replicated (a replica's memory)"
        )


def rq_settings(settings: Settings) -> dict[str, object]:
    """RQ's own command-line settings (its REDIS_URL or SENTINEL) for the same Redis, reached the way
    `sync_client` reaches it: workers/rq_config.py hands them to `rq worker -c workers.rq_config`."""
    if not settings.redis_sentinels:
        return {"REDIS_URL": settings.redis_url}
    opts = {"retry": failover_retry(), "socket_keepalive": True, "socket_keepalive_options": dict(_KEEPALIVE)}
    kwargs = _primary_kwargs(settings, opts, (FollowingConnection, FollowingSSLConnection))
    timeouts = {"socket_timeout": 5, "socket_connect_timeout": 2}
    return {
        "SENTINEL": {
            "INSTANCES": list(settings.redis_sentinels),
            "MASTER_NAME": settings.redis_sentinel_master,
            "DB": kwargs.pop("db", 0),
            "USERNAME": kwargs.pop("username", None),
            "PASSWORD": kwargs.pop("password", None),
            "SENTINEL_KWARGS": _sentinel_kwargs(settings, timeouts, no_retry()),
            "CONNECTION_KWARGS": kwargs,
        }
    }
