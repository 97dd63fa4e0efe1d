"""Tokens (issue #7 item 3): constant-time checks, wrong ones refused, brute force throttled per address."""

from __future__ import annotations

import ast
import inspect
import secrets
import textwrap

import httpx
import pytest
import redis

import ingress.auth
from ingress.app import SessionRoutes
from ingress.push import PushEndpoint
from shared import keys
from shared.redis_server import RedisServer
from tests.processes import RelayProcesses, relay_env, relay_processes
from tests.security.conftest import ClientFactory
from tests.security.helpers import REGISTRATION, VALID_TRIGGER, basic_auth

# Constant-time comparison and wrong tokens ----------------------------------------------------------


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)


def _called(node: ast.AST) -> list[str]:
    return [ast.unparse(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)]


def test_token_checks_use_hmac_compare_digest() -> None:
    tree = ast.parse(inspect.getsource(ingress.auth))
    equal = _function(tree, "_equal")
    assert "hmac.compare_digest" in _called(equal)
    assert not [n for n in ast.walk(equal) if isinstance(n, ast.Compare | ast.If)]  # no early exit on length
    for name in ("push_token_ok", "bearer_ok"):
        function = _function(tree, name)
        assert "_equal" in _called(function), name
        # The expected token only ever reaches the constant-time comparison, never `==`, `in`, len().
        uses = [n for n in ast.walk(function) if isinstance(n, ast.Name) and n.id == "expected"]
        in_equal = [
            n
            for call in ast.walk(function)
            if isinstance(call, ast.Call) and ast.unparse(call.func) == "_equal"
            for n in call.args
            if isinstance(n, ast.Name) and n.id == "expected"
        ]
        assert len(uses) == len(in_equal), f"{name} uses the expected token outside _equal"
    # Both tokens are checked with these functions.
    push_source = textwrap.dedent(inspect.getsource(PushEndpoint.__call__))
    session_source = textwrap.dedent(inspect.getsource(SessionRoutes.handle))
    assert "push_token_ok(self.token" in push_source
    assert "bearer_ok(self.token" in session_source
    for source in (push_source, session_source):
        assert "== self.token" not in source and "self.token ==" not in source


def _wrong_tokens(token: str) -> dict[str, str]:
    return {
        "equal-length-last-char": token[:-1] + ("x" if token[-1] != "x" else "y"),
        "equal-length-first-char": ("X" if token[0] != "X" else "Y") + token[1:],
        "equal-length-random": secrets.token_hex(len(token) // 2 + 1)[: len(token)],
        "prefix": token[:-1],
        "extension": token + "0",
        "empty": "",
        "much-longer": token * 40,
        "non-ascii": token[:-1] + "é",
        "upper-case": token.upper(),
    }


@pytest.mark.parametrize("place", ["query", "bearer", "basic"])
def test_wrong_push_tokens_of_any_length_are_401(
    make_client: ClientFactory, redis_client: redis.Redis, place: str
) -> None:
    token = "Push-" + secrets.token_hex(12)
    for label, wrong in _wrong_tokens(token).items():
        client = make_client(PUSH_TOKEN=token)  # a fresh app each time: the throttle stays out of it
        url = "/push"
        headers: dict[bytes, bytes] = {}
        if place == "query":
            url = f"/push?{httpx.QueryParams({'token': wrong})}"
        elif place == "bearer":
            headers[b"authorization"] = f"Bearer {wrong}".encode()
        else:
            headers[b"authorization"] = basic_auth(wrong).encode()
        reply = client.post(url, content=VALID_TRIGGER, headers=headers)
        assert reply.status_code == 401, (label, reply.text)
        assert reply.json()["error"] == "unauthorized"
        assert token not in reply.text and (not wrong or wrong not in reply.text)
    assert redis_client.dbsize() == 0


def test_one_request_cannot_try_many_push_tokens(
    make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    """The throttle counts requests, so one request must be one guess: a request carrying many
    `token` parameters (one of them right) is refused, or the 20-a-minute limit means nothing."""
    token = "push-" + secrets.token_hex(16)
    client = make_client(PUSH_TOKEN=token)
    guesses = [f"guess-{i}" for i in range(500)]
    query = httpx.QueryParams([("token", guess) for guess in [*guesses, token]])
    reply = client.post(f"/push?{query}", content=VALID_TRIGGER)
    assert reply.status_code == 401, reply.text
    assert redis_client.dbsize() == 0


def test_sessions_need_the_api_token(make_client: ClientFactory, redis_client: redis.Redis) -> None:
    token = "api-" + secrets.token_hex(16)
    client = make_client(API_TOKEN=token)
    assert client.put("/sessions/s1", json=REGISTRATION).status_code == 401
    for label, wrong in _wrong_tokens(token).items():
        client = make_client(API_TOKEN=token)  # a fresh app each time: the throttle stays out of it
        for method in ("PUT", "DELETE"):
            reply = client.request(
                method,
                "/sessions/s1",
                json=REGISTRATION,
                headers={b"authorization": f"Bearer {wrong}".encode()},
            )
            assert reply.status_code == 401, (label, method, reply.text)
            assert reply.json()["error"] == "unauthorized"
            assert token not in reply.text
    # Only `Bearer` (any case, RFC 7235) carries the API token; basic auth and ?token= do not.
    client = make_client(API_TOKEN=token)
    for header, status in ((basic_auth(token), 401), (f"Token {token}", 401), (f"bearer {token}", 204)):
        reply = client.put("/sessions/s1", json=REGISTRATION, headers={"authorization": header})
        assert reply.status_code == status, header
    assert client.put(f"/sessions/s1?token={token}", json=REGISTRATION).status_code == 401
    assert redis_client.hget(keys.credentials("s1"), "secureKey") == b"REST-KEY"


def test_sessions_are_404_when_api_token_is_unset(
    make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    client = make_client()
    for method in ("PUT", "DELETE"):
        reply = client.request(
            method, "/sessions/s1", json=REGISTRATION, headers={"authorization": "Bearer anything"}
        )
        assert reply.status_code == 404
        assert reply.json()["error"] == "not_found"
    assert redis_client.dbsize() == 0


# Throttling of authentication failures ---------------------------------------------------------------


def _client_from(relay: RelayProcesses, address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=relay.base_url, transport=transport, timeout=10.0)


def test_auth_failures_are_throttled_per_address(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    token = "push-" + secrets.token_hex(16)
    env = relay_env(REDIS_URL=redis_server.url, PUSH_TOKEN=token)
    with (
        relay_processes(env, workers=0) as relay,
        _client_from(relay, "127.0.0.2") as attacker,
        _client_from(relay, "127.0.0.3") as neighbour,
    ):
        codes = [
            attacker.post(f"/push?token=guess-{i}", content=VALID_TRIGGER).status_code for i in range(25)
        ]
        assert codes == [401] * 20 + [429] * 5
        throttled = attacker.post(f"/push?token={token}", content=VALID_TRIGGER)
        assert throttled.status_code == 429  # even the right token, while throttled
        assert throttled.json()["error"] == "too_many_failures"
        assert token not in throttled.text
        # The throttle keys on the peer address: a forwarded-for header from an untrusted peer is no escape.
        spoofed = attacker.post(
            f"/push?token={token}", content=VALID_TRIGGER, headers={"x-forwarded-for": "198.51.100.7"}
        )
        assert spoofed.status_code == 429
        assert redis_client.dbsize() == 0
        # Another address is not affected: its right token works and its wrong ones are plain 401s.
        assert neighbour.post(f"/push?token={token}", content=VALID_TRIGGER).json() == {"status": "queued"}
        assert neighbour.post("/push?token=guess", content=VALID_TRIGGER).status_code == 401
