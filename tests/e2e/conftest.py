from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulator.server import ChatServer


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    with ChatServer() as server:
        yield server
