"""Fixtures for the shared modules' tests: `raw_server`, loopback servers of tests/shared/raw_http.py."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest

from tests.shared.raw_http import RawServer, Reply, ServerFactory


@pytest.fixture
def raw_server() -> Iterator[ServerFactory]:
    servers: list[RawServer] = []

    def start(answer: Reply, tls: ssl.SSLContext | None = None) -> RawServer:
        servers.append(RawServer(answer, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
