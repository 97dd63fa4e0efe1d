from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.conftest import ClientFactory

__all__ = ["ClientFactory"]


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()
