from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from starlette.testclient import TestClient

from ingress.app import create_app
from tests.conftest import SettingsFactory

ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(make_settings: SettingsFactory, redis_client: object) -> Iterator[ClientFactory]:
    """A TestClient over a fresh app built from env overrides (Redis already flushed)."""
    opened: list[TestClient] = []

    def factory(**env: str) -> TestClient:
        client = TestClient(create_app(make_settings(**env)), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()
