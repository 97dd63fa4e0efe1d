from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from starlette.testclient import TestClient

from ingress.app import create_app
from shared import keys
from shared.settings import Settings
from tests.conftest import SettingsFactory, connect_to_redis
from workers.context import WorkerContext, set_context

Burst = Callable[[], None]
BurstUntil = Callable[[Callable[[], bool]], None]


@pytest.fixture
def relay_env() -> dict[str, str]:
    """Environment of the relay under test; tests add to it before using `relay`."""
    return {"GMS_URL": "http://127.0.0.1:9"}


@pytest.fixture
def relay_settings(
    make_settings: SettingsFactory, relay_env: dict[str, str], redis_client: redis.Redis
) -> Settings:
    return make_settings(**relay_env)


@pytest.fixture
def ingress(relay_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(relay_settings)) as client:
        connect_to_redis(client)
        yield client


@pytest.fixture
def burst(relay_settings: Settings, redis_client: redis.Redis) -> Iterator[Burst]:
    """Run an in-process SimpleWorker until the queues are empty (RQ's burst mode)."""
    context = WorkerContext.build(relay_settings)
    set_context(context)
    queues = [Queue(q, connection=redis_client, serializer=JSONSerializer) for q in keys.QUEUES]

    def run() -> None:
        SimpleWorker(queues, connection=redis_client, serializer=JSONSerializer).work(burst=True)

    yield run
    set_context(None)
    context.close()


@pytest.fixture
def burst_until(burst: Burst) -> BurstUntil:
    """Burst, and again whenever the watcher finds work due later (backoffs, gap waits), until done."""
    from workers.context import get_context

    def run(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        burst()
        while not condition():
            assert time.monotonic() < deadline, "condition not met within 30 s"
            if get_context().watcher.check_once():
                burst()
            time.sleep(0.02)

    return run


def stream_entries(client: redis.Redis, device_id: str) -> list[dict[str, str]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(keys.stream(device_id))  # type: ignore[assignment]
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
