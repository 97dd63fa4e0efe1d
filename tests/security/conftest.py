"""Fixtures of the security tests: ingress TestClients over fresh apps, and the simulated Chat API.

Defined here (not imported) so this directory does not depend on where other test packages keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from starlette.testclient import TestClient

from ingress.app import create_app
from simulator.server import ChatServer
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
def chat_server() -> Iterator[ChatServer]:
    with ChatServer() as server:
        yield server
