"""The reply path's own Redis client (ingress/redis_link.py) against a real Redis: the bytes it sends,
the database it selects, scripts flushed under it, a stuck server, and pipelined replies."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, ResponseError

from ingress.redis_link import RedisLink, pack
from ingress.store import IngressStore
from shared.errors import RedisUnavailable
from shared.models import Trigger
from tests.conftest import SettingsFactory


@pytest.mark.parametrize(
    "args", [("PING",), ("SET", "k", b"\x00\xff", "PX", 5), ("EVALSHA", "a" * 40, 0, -1, "é")]
)
def test_pack_sends_the_bytes_redis_py_sends(args: tuple[str | bytes | int, ...]) -> None:
    assert pack(*args) == b"".join(Connection().pack_command(*args))


def _trigger(device: str = "dev-1", session: str = "s1") -> Trigger:
    return Trigger(device_id=device, session_id=session, position=1, attempt=0)


def test_a_push_lands_in_the_database_of_redis_url(
    make_settings: SettingsFactory, redis_client: redis.Redis
) -> None:
    settings = make_settings()
    url = settings.redis_url.rsplit("/", 1)[0] + "/3"
    store = IngressStore(make_settings(REDIS_URL=url))
    assert store._link_kwargs is not None  # plain TCP: the links are used

    async def run() -> str:
        try:
            return await store.ingest(_trigger())
        finally:
            await store.close()

    assert asyncio.run(run()) == "queued"
    other = redis.Redis.from_url(url)
    assert other.exists("gms-relay:session:s1") and not redis_client.exists("gms-relay:session:s1")


def test_scripts_flushed_under_a_held_link_are_loaded_again(
    make_settings: SettingsFactory, redis_client: redis.Redis
) -> None:
    store = IngressStore(make_settings())

    async def run() -> list[str]:
        try:
            first = await store.ingest(_trigger(session="s1"))
            redis_client.script_flush()
            return [first, await store.ingest(_trigger(device="dev-2", session="s2"))]
        finally:
            await store.close()

    assert asyncio.run(run()) == ["queued", "queued"]


def test_a_stuck_redis_is_a_503_and_the_link_recovers(
    make_settings: SettingsFactory, redis_client: redis.Redis
) -> None:
    store = IngressStore(make_settings())

    async def run() -> tuple[bool, str]:
        try:
            assert await store.ping()
            redis_client.client_pause(600)  # every other client's commands wait 600 ms: past the deadline
            try:
                await store.ingest(_trigger())
                refused = False
            except RedisUnavailable:
                refused = True
            # After the pause: the timed-out link was closed (no late reply can answer the next call).
            return refused, await _retry_until_served(store)
        finally:
            await store.close()

    refused, after = asyncio.run(run())
    assert refused and after == "queued"


async def _retry_until_served(store: IngressStore) -> str:
    """The same push again until the pause is over (a 503 meanwhile stores nothing)."""
    for _ in range(100):
        try:
            return await store.ingest(_trigger(device="dev-2", session="s2"))
        except RedisUnavailable:
            await asyncio.sleep(0.02)
    raise AssertionError("Redis never served the push again")


def test_pipelined_replies_come_back_in_order_errors_included(make_settings: SettingsFactory) -> None:
    kwargs = IngressStore(make_settings()).client.connection_pool.connection_kwargs

    async def run() -> list[object]:
        link = RedisLink()
        await link.connect(kwargs, 1.0)
        try:
            request = (
                pack("SET", "a", "1")
                + pack("EVALSHA", "0" * 40, 0)
                + pack("INCR", "a")
                + pack("HGET", "a", "f")
            )
            return await link.call(request, 4, 1.0)
        finally:
            link.close()

    ok, noscript, incr, wrongtype = asyncio.run(run())
    assert ok == b"OK" and incr == 2
    assert isinstance(noscript, NoScriptError) and isinstance(wrongtype, ResponseError)
