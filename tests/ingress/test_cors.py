"""CORS_ORIGINS on the browser-facing endpoints only (device streams, /chats and its actions, /demo):
preflights and actual requests from an allowed and a refused origin; /push, /sessions and token
minting never answer a browser; the demo page keeps its CSP; a query-string token only opens a
device stream."""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from shared import device_tokens
from tests.conftest import ClientFactory
from tests.pushes import body, trigger_message

ALLOWED, REFUSED = "https://app.example.com", "https://evil.example"
SECRET = "cors-device-token-secret"
BROWSER_PATHS = ("/chats", "/chats/c1/messages", "/devices/d1/events")
ACAO = "access-control-allow-origin"


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client(
        CORS_ORIGINS=f"{ALLOWED}, http://localhost:3000",
        DEVICE_TOKEN_SECRET=SECRET,
        API_TOKEN="api-token",
        GMS_URL="http://127.0.0.1:9",  # never reached: every request here stops before GMS
        DEMO="true",
    )


def preflight(client: TestClient, path: str, origin: str, method: str = "POST", **headers: str) -> Any:
    return client.options(
        path,
        headers={"Origin": origin, "Access-Control-Request-Method": method, **headers},
    )


def test_a_preflight_from_an_allowed_origin_is_answered(client: TestClient) -> None:
    for path in BROWSER_PATHS:
        method = "GET" if path.endswith("/events") else "POST"
        reply = preflight(
            client, path, ALLOWED, method, **{"Access-Control-Request-Headers": "authorization"}
        )
        assert reply.status_code == 200, path
        assert reply.headers[ACAO] == ALLOWED
        assert method in reply.headers["access-control-allow-methods"]
        assert "Authorization" in reply.headers["access-control-allow-headers"]
        assert "access-control-allow-credentials" not in reply.headers  # bearer tokens, never cookies


def test_a_preflight_from_a_refused_origin_is_refused_in_json(client: TestClient) -> None:
    for path in BROWSER_PATHS:
        reply = preflight(client, path, REFUSED)
        assert reply.status_code == 400, path
        assert reply.json() == {"error": "cors_refused", "detail": "Disallowed CORS origin"}
        assert ACAO not in reply.headers
    # An allowed origin asking for a method or header the endpoints do not take is refused too.
    reply = preflight(client, "/chats", ALLOWED, "DELETE", **{"Access-Control-Request-Headers": "x-api-key"})
    assert reply.status_code == 400 and reply.json()["detail"] == "Disallowed CORS method, headers"


def test_actual_requests_carry_cors_headers_for_allowed_origins_only(client: TestClient) -> None:
    requests: list[tuple[str, str, dict[str, str] | None]] = [  # answered before any GMS call
        ("GET", "/devices/d1/events", None),  # 401: no token
        ("POST", "/chats", {}),  # 400: no nickname
        ("POST", "/chats/c1/typing", None),  # 401: no token
    ]
    for method, path, json in requests:
        allowed, refused = (
            client.request(method, path, json=json, headers={"Origin": origin})
            for origin in (ALLOWED, REFUSED)
        )
        assert allowed.status_code == refused.status_code and allowed.status_code in (400, 401)
        assert allowed.headers[ACAO] == ALLOWED and "Origin" in allowed.headers["vary"]
        assert allowed.headers["access-control-expose-headers"] == "Retry-After"
        assert ACAO not in refused.headers  # the browser keeps the reply from the page
    assert (
        client.get("/demo", headers={"Origin": "http://localhost:3000"}).headers[ACAO]
        == "http://localhost:3000"
    )


def test_push_sessions_and_token_minting_never_answer_a_browser(client: TestClient) -> None:
    for path, method in (("/push", "POST"), ("/sessions/s1", "PUT"), ("/devices/d1/tokens", "POST")):
        reply = preflight(client, path, ALLOWED, method)
        assert reply.status_code == 405 and ACAO not in reply.headers, path
    pushed = client.post("/push", content=body(trigger_message(1)), headers={"Origin": ALLOWED})
    assert pushed.status_code == 200 and ACAO not in pushed.headers
    minted = client.post(
        "/devices/d1/tokens", headers={"Origin": ALLOWED, "Authorization": "Bearer api-token"}
    )
    assert minted.status_code == 201 and ACAO not in minted.headers
    assert ACAO not in client.get("/metrics", headers={"Origin": ALLOWED}).headers


def test_without_cors_origins_no_origin_is_answered(make_client: ClientFactory) -> None:
    client = make_client(DEVICE_TOKEN_SECRET=SECRET, GMS_URL="http://127.0.0.1:9")
    assert preflight(client, "/chats", ALLOWED).status_code == 405  # no middleware at all
    assert ACAO not in client.get("/devices/d1/events", headers={"Origin": ALLOWED}).headers


def test_any_origin_with_a_star(make_client: ClientFactory) -> None:
    client = make_client(CORS_ORIGINS="*", DEVICE_TOKEN_SECRET=SECRET)
    assert preflight(client, "/devices/d1/events", REFUSED, "GET").headers[ACAO] == "*"
    assert client.get("/devices/d1/events", headers={"Origin": REFUSED}).headers[ACAO] == "*"


def test_the_demo_page_keeps_a_strict_content_security_policy(client: TestClient) -> None:
    reply = client.get("/demo", headers={"Origin": ALLOWED})
    policy = dict(part.strip().split(" ", 1) for part in reply.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    assert policy["script-src"].startswith("'sha256-") and "'unsafe-inline'" not in policy["script-src"]


def test_a_query_string_token_is_accepted_on_the_device_stream_only(client: TestClient) -> None:
    token, _ = device_tokens.issue(SECRET, "d1", 60, time.time())
    action = client.post(f"/chats/c1/typing?token={token}")
    assert action.status_code == 401 and action.json()["error"] == "unauthorized"
    minting = client.post(f"/devices/d1/tokens?token={token}")
    assert minting.status_code == 401
    # The stream itself takes it (EventSource cannot set headers): not refused for the token.
    with client.stream("GET", f"/devices/d1/events?token={token}") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
