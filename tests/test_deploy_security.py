"""Deployment files keep the relay secure by default: compose never starts an ingress without a push
token, and what it passes reaches the relay as the token lists it rotates with (test_deploy_files.py
checks the rest of the compose file)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.settings import load_settings
from tests.test_deploy_files import ENV_EXAMPLE, compose, resolved, services

__all__ = ["compose", "services"]  # the fixtures, shared with test_deploy_files.py


def test_compose_requires_a_push_token(services: dict[str, dict[str, Any]]) -> None:
    for name in ("ingress", "worker", "simulator"):
        value = str(services[name]["environment"]["PUSH_TOKEN"])
        assert value.startswith("${PUSH_TOKEN:?") and len(value) > len("${PUSH_TOKEN:?}"), name
    with pytest.raises(AssertionError):  # compose refuses to interpolate it: nothing starts
        resolved(services["ingress"]["environment"]["PUSH_TOKEN"], {"GMS_URL": "http://gms:8080"})
    # `.env.example` leaves it empty on purpose: compose refuses an empty value too (`:?`).
    assert "PUSH_TOKEN=" in ENV_EXAMPLE.read_text().splitlines()


def test_compose_passes_token_lists_and_keeps_push_closed(services: dict[str, dict[str, Any]]) -> None:
    given = {"GMS_URL": "http://gms:8080", "PUSH_TOKEN": "new-token,old-token", "API_TOKEN": "a1,a2"}
    env = {var: resolved(str(value), given) for var, value in services["ingress"]["environment"].items()}
    settings = load_settings(env)
    assert settings.push_token == ("new-token", "old-token")
    assert settings.api_token == ("a1", "a2")
    assert settings.allow_open_push is False and settings.cors_origins == ()
