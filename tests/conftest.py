"""Fixtures: a real redis-server per test session, flushed between tests; settings from dicts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from ingress.app import create_app
from shared.redis_server import RedisServer
from shared.settings import Settings, load_settings
from simulator.server import ChatServer

SettingsFactory = Callable[..., Settings]
ClientFactory = Callable[..., TestClient]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def make_settings(redis_server: RedisServer) -> SettingsFactory:
    """Settings from an environment dict; REDIS_URL points at the test server unless given."""

    def factory(**env: str) -> Settings:
        return load_settings({"REDIS_URL": redis_server.url, **env})

    return factory


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    """The simulator's Chat API v2 on a free loopback port (the relay's GMS_URL)."""
    with ChatServer() as server:
        yield server


def connect_to_redis(client: TestClient) -> None:
    """Let the app open its Redis connection (GET /readyz) before the test's own requests: its connect
    timeout is 50 ms, which a stall on a loaded machine can exceed, turning a first push into a 503."""
    for _ in range(20):
        if client.get("/readyz").status_code == 200:
            return


@pytest.fixture
def make_client(make_settings: SettingsFactory, redis_client: object) -> Iterator[ClientFactory]:
    """A TestClient over a fresh ingress app built from env overrides (Redis already flushed)."""
    opened: list[TestClient] = []

    def factory(**env: str) -> TestClient:
        client = TestClient(create_app(make_settings(**env)), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        connect_to_redis(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)
