"""Fixtures for the shared modules' tests: `raw_server`, loopback servers of tests/shared/raw_http.py;
`make_relay` and `relay`, the Lua scripts against the test Redis (tests/shared/scripts_relay.py)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import SettingsFactory
from tests.shared.raw_http import RawServer, Reply, ServerFactory
from tests.shared.scripts_relay import TTLS, Relay, RelayFactory


@pytest.fixture
def raw_server() -> Iterator[ServerFactory]:
    servers: list[RawServer] = []

    def start(answer: Reply, tls: ssl.SSLContext | None = None) -> RawServer:
        servers.append(RawServer(answer, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def make_relay(make_settings: SettingsFactory, redis_client: redis.Redis) -> RelayFactory:
    def factory(**env: str) -> Relay:
        return Relay(make_settings(**env), redis_client)

    return factory


@pytest.fixture
def relay(make_relay: RelayFactory) -> Relay:
    return make_relay(**TTLS)
