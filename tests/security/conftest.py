"""The security tests use the suite's shared fixtures (tests/conftest.py)."""

from __future__ import annotations

from tests.conftest import ClientFactory

__all__ = ["ClientFactory"]
