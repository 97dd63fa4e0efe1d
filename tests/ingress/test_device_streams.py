"""Device event streams (GET /devices/{deviceId}/events) and token minting, over real HTTP.

A real uvicorn serves the ingress app in a thread of the test process (Starlette's TestClient
collects a whole response before returning it, which an endless stream never ends); a real SSE
client (httpx-sse) reads it; entries are real XADDs with the fields the workers write
(shared/lua/commit.lua, fanout.lua). tests/e2e/test_device_events.py drives real pushes through it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from httpx_sse import ServerSentEvent, connect_sse
from starlette.testclient import TestClient

from ingress import openapi_devices
from ingress.app import create_app
from shared import device_tokens, keys
from shared.redis_server import free_port
from shared.settings import Settings
from tests.conftest import SettingsFactory
from tests.processes import wait_for

SECRET = "device-token-secret-for-tests"
API_TOKEN = "api-token-for-tests"
Serve = Callable[..., str]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` on a free loopback port, served by uvicorn in a thread, until the block ends."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 20)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.fixture
def serve(make_settings: SettingsFactory, redis_client: redis.Redis) -> Iterator[Serve]:
    """Start the ingress with these settings (device tokens on) and return its base URL."""
    with contextlib.ExitStack() as stack:

        def factory(**env: str) -> str:
            settings = make_settings(**{"DEVICE_TOKEN_SECRET": SECRET, "API_TOKEN": API_TOKEN, **env})
            return stack.enter_context(serving(create_app(settings)))

        yield factory


def token_for(device_id: str, ttl_s: int = 3600, now: float | None = None, secret: str = SECRET) -> str:
    return device_tokens.issue(secret, device_id, ttl_s, time.time() if now is None else now)[0]


def add(client: redis.Redis, device_id: str, index: int | None = None, **event: Any) -> str:
    """One stream entry as the workers write it: a transcript event (with index) or a notice."""
    fields: dict[Any, Any] = {"type": event.pop("type", "Message"), "sessionId": "s1"}
    if index is not None:
        fields["index"] = index
    fields["data"] = json.dumps({"index": index, "text": "hi", **event})
    entry_id = client.xadd(keys.stream(device_id), fields)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


@contextmanager
def events(
    base: str, device_id: str, token: str | None = None, query: str = "", **headers: str
) -> Iterator[Iterator[ServerSentEvent]]:
    """An open device stream's messages (comments are not messages: see the heartbeat test)."""
    token = token_for(device_id) if token is None else token
    with httpx.Client(timeout=10) as http:
        send = {"Authorization": f"Bearer {token}", **headers} if token else headers
        url = f"{base}/devices/{device_id}/events{query}"
        with connect_sse(http, "GET", url, headers=send) as source:
            assert source.response.status_code == 200, source.response.read()
            yield source.iter_sse()


def take(messages: Iterator[ServerSentEvent], count: int) -> list[ServerSentEvent]:
    return [next(messages) for _ in range(count)]


def body(message: ServerSentEvent) -> dict[str, Any]:
    decoded = json.loads(message.data)
    assert isinstance(decoded, dict)
    return decoded


def status(base: str, device_id: str, token: str | None, query: str = "") -> httpx.Response:
    """The reply to opening a stream that is expected to be refused (a refusal has a JSON body)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.stream(
        "GET", f"{base}/devices/{device_id}/events{query}", headers=headers, timeout=10
    ) as reply:
        if reply.status_code != 200:  # an accepted stream never ends: it is closed unread
            reply.read()
        return reply


def test_what_the_stream_holds_then_live_events_in_order(serve: Serve, redis_client: redis.Redis) -> None:
    base = serve()
    first = add(redis_client, "d1", 1, text="before")
    with events(base, "d1") as messages:
        (held,) = take(messages, 1)
        assert held.id == first and held.event == "message"  # no `event:` line: onmessage gets it
        assert body(held) == {
            "type": "Message",
            "sessionId": "s1",
            "index": 1,  # a number, as in webhook bodies
            "data": {"index": 1, "text": "before"},  # the event JSON itself, not a string of it
        }
        live = [add(redis_client, "d1", i, text=f"live {i}") for i in (2, 3)]
        wakeup = redis_client.xadd(keys.stream("d1"), {"type": "device.wakeup", "data": '{"text": "x"}'})
        got = take(messages, 3)
    assert [m.id for m in got] == [*live, wakeup.decode()]  # type: ignore[union-attr]
    assert [body(m)["data"]["text"] for m in got[:2]] == ["live 2", "live 3"]
    assert body(got[2]) == {"type": "device.wakeup", "data": {"text": "x"}}  # no sessionId, no index


def test_event_json_with_line_breaks_stays_one_message(serve: Serve, redis_client: redis.Redis) -> None:
    base = serve()
    redis_client.xadd(keys.stream("d1"), {"type": "Message", "data": '{\n  "text": "a\\nb"\r\n}'})
    with events(base, "d1") as messages:
        (message,) = take(messages, 1)
    assert body(message)["data"] == {"text": "a\nb"}


@pytest.mark.parametrize("where", ["header", "query", "both"])
def test_resume_loses_and_repeats_nothing(serve: Serve, redis_client: redis.Redis, where: str) -> None:
    base = serve()
    ids = [add(redis_client, "d1", i) for i in range(1, 6)]
    with events(base, "d1") as messages:
        seen = take(messages, 2)  # the client drops after the second event
    last = seen[-1].id
    headers = {"Last-Event-ID": last} if where != "query" else {}
    # The header wins: a browser's reconnect sends it, while the URL keeps the page's first query.
    query = f"?lastEventId={ids[0] if where == 'both' else last}" if where != "header" else ""
    with events(base, "d1", query=query, **headers) as messages:
        resumed = take(messages, 3)
        ids.append(add(redis_client, "d1", 6))
        resumed += take(messages, 1)
    assert [m.id for m in seen + resumed] == ids
    assert [body(m)["index"] for m in seen + resumed] == [1, 2, 3, 4, 5, 6]


def test_a_trimmed_resume_point_gets_a_gap_event_first(serve: Serve, redis_client: redis.Redis) -> None:
    base = serve()
    ids = [add(redis_client, "d1", i) for i in range(1, 11)]
    redis_client.xtrim(keys.stream("d1"), maxlen=5, approximate=False)  # entries 1-5 are gone
    with events(base, "d1", **{"Last-Event-ID": ids[1]}) as messages:
        gap, *rest = take(messages, 6)
    assert gap.event == "gap" and gap.id == ""  # no id: dropping right after it resumes from the same point
    assert json.loads(gap.data) == {"lastEventId": ids[1], "firstId": ids[5]}
    assert [m.id for m in rest] == ids[5:] and {m.event for m in rest} == {"message"}
    with events(base, "d1", **{"Last-Event-ID": ids[6]}) as messages:  # still held: no gap
        assert [m.id for m in take(messages, 3)] == ids[7:]


def test_comment_heartbeats_on_an_idle_stream(serve: Serve, redis_client: redis.Redis) -> None:
    base = serve(SSE_HEARTBEAT_S="1")
    headers = {"Authorization": f"Bearer {token_for('d1')}"}
    with httpx.stream("GET", f"{base}/devices/d1/events", headers=headers, timeout=10) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["cache-control"] == "no-store"
        lines = reply.iter_lines()
        heartbeat = [next(lines), next(lines)]
    assert heartbeat == [": heartbeat", ""]  # a comment line, then the blank line ending it


def test_a_stream_needs_a_genuine_unexpired_token_of_its_own_device(
    serve: Serve, redis_client: redis.Redis
) -> None:
    base = serve()
    forged = token_for("d1", secret="another-secret-of-16+-chars")
    expired = token_for("d1", ttl_s=60, now=time.time() - 61)
    tampered = token_for("d1")[:-2] + ("AA" if not token_for("d1").endswith("AA") else "BB")
    for token in (None, "garbage", forged, expired, tampered):
        reply = status(base, "d1", token)
        assert reply.status_code == 401, token
        assert reply.json()["error"] == "unauthorized"
    other = status(base, "d1", token_for("d2"))
    assert other.status_code == 403 and other.json()["error"] == "forbidden"
    # EventSource cannot set headers: the token may come in the query, once.
    with events(base, "d1", token="", query=f"?token={token_for('d1')}") as messages:
        add(redis_client, "d1", 1)
        assert body(take(messages, 1)[0])["index"] == 1
    twice = status(base, "d1", None, query=f"?token={token_for('d1')}&token={token_for('d1')}")
    assert twice.status_code == 401


def test_a_malformed_resume_point_is_refused(serve: Serve) -> None:
    base = serve()
    reply = status(base, "d1", token_for("d1"), query="?lastEventId=yesterday")
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_last_event_id"


def test_without_a_secret_device_streams_and_minting_are_off(make_client: Callable[..., TestClient]) -> None:
    client = make_client(API_TOKEN=API_TOKEN)
    assert client.get("/devices/d1/events", headers={"Authorization": "Bearer x"}).status_code == 404
    minted = client.post("/devices/d1/tokens", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert minted.status_code == 404 and minted.json()["error"] == "not_found"


def blocked_readers(client: redis.Redis) -> int:
    return int(client.info("clients")["blocked_clients"])


def test_limits_per_device_and_per_process_free_their_slots(serve: Serve, redis_client: redis.Redis) -> None:
    base = serve(SSE_DEVICE_MAX_CONNECTIONS="2", SSE_MAX_CONNECTIONS="3")
    with events(base, "d1"), events(base, "d1"):
        reply = status(base, "d1", token_for("d1"))
        assert reply.status_code == 429 and reply.json()["error"] == "too_many_device_streams"
        with events(base, "d2"):
            full = status(base, "d3", token_for("d3"))
            assert full.status_code == 503 and full.json()["error"] == "too_many_streams"
            wait_for(lambda: blocked_readers(redis_client) == 3, 10)  # one blocked XREAD per stream
    # Gone clients give back their slots and their Redis connections.
    wait_for(lambda: blocked_readers(redis_client) == 0, 10)
    wait_for(lambda: status(base, "d3", token_for("d3"), query="?probe").status_code != 503, 10)
    with events(base, "d1"), events(base, "d1"), events(base, "d2"):
        pass


def test_a_client_that_stops_reading_is_dropped_and_frees_its_slot(
    serve: Serve, redis_client: redis.Redis
) -> None:
    base = serve(SSE_SEND_TIMEOUT_S="1", SSE_DEVICE_MAX_CONNECTIONS="1")
    port = int(base.rsplit(":", 1)[1])
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: it sets the window
    stalled.connect(("127.0.0.1", port))
    headers = f"Host: t\r\nAuthorization: Bearer {token_for('d1')}"
    stalled.sendall(f"GET /devices/d1/events HTTP/1.1\r\n{headers}\r\n\r\n".encode())
    try:
        assert stalled.recv(12) == b"HTTP/1.1 200"
        assert status(base, "d1", token_for("d1")).status_code == 429  # its one slot is taken
        for i in range(120):  # 6 MB: beyond what the socket buffers hold (loopback's grow to 4 MB)
            add(redis_client, "d1", i, text="x" * 50_000)
        # Its sends stall, then time out: the stream ends and the device may open another.
        wait_for(lambda: status(base, "d1", token_for("d1")).status_code == 200, 30)
    finally:
        stalled.close()


def test_minting_a_device_token(make_client: Callable[..., TestClient]) -> None:
    client = make_client(DEVICE_TOKEN_SECRET=SECRET, API_TOKEN=API_TOKEN, DEVICE_TOKEN_TTL_S="600")
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    before = int(time.time())
    minted = client.post("/devices/d1/tokens", headers=auth)
    assert minted.status_code == 201 and minted.headers["cache-control"] == "no-store"
    reply = minted.json()
    assert set(reply) == {"token", "expiresAt"}
    expires = time.mktime(time.strptime(reply["expiresAt"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before + 600 <= expires <= time.time() + 600
    assert device_tokens.verify(SECRET, reply["token"], time.time()) == "d1"
    assert device_tokens.verify(SECRET, reply["token"], before + 600) is None
    short = client.post("/devices/d1/tokens", headers=auth, json={"ttlS": 60}).json()
    assert device_tokens.verify(SECRET, short["token"], before + 61) is None
    for bad in ({"ttlS": 601}, {"ttlS": 0}, {"ttlS": "60"}, {"other": 1}):
        refused = client.post("/devices/d1/tokens", headers=auth, json=bad)
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_request", bad
    assert client.post("/devices/d1/tokens", headers=auth, content=b"{").json()["error"] == "invalid_json"
    for wrong in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {token_for('d1')}"}):
        refused = client.post("/devices/d1/tokens", headers=wrong)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"


def test_tokens_never_reach_the_logs(
    serve: Serve, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    base = serve()
    token = token_for("d1")
    status(base, "d1", token[:-4] + "AAAA")
    status(base, "d2", token)
    with events(base, "d1", token="", query=f"?token={token}") as messages:
        add(redis_client, "d1", 1)
        take(messages, 1)
    # The relay's side only: the test's own HTTP client logs the URLs it requests.
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert server_side and not any(token[-20:] in r.getMessage() for r in server_side)


def test_the_openapi_description_lists_what_the_endpoints_answer(make_settings: SettingsFactory) -> None:
    on = openapi_devices.paths(make_settings(DEVICE_TOKEN_SECRET=SECRET, API_TOKEN=API_TOKEN))
    off = openapi_devices.paths(make_settings())
    assert set(on) == {"/devices/{deviceId}/events", "/devices/{deviceId}/tokens"}
    assert all("Disabled here" in path["description"] for path in off.values())
    assert not any("Disabled here" in path["description"] for path in on.values())
    for path in on.values():
        for operation in (v for k, v in path.items() if k in ("get", "post")):
            statuses = {int(s) for s in operation["responses"] if not s.startswith("2")}
            assert statuses <= set(openapi_devices.ERROR_CODES)
    # The codes these tests see the endpoints answer are all listed.
    for status, code in ((401, "unauthorized"), (403, "forbidden"), (429, "too_many_device_streams")):
        assert code in openapi_devices.ERROR_CODES[status]
    assert {"too_many_streams", "redis_unavailable"} <= set(openapi_devices.ERROR_CODES[503])


def test_settings(make_settings: SettingsFactory) -> None:
    settings: Settings = make_settings()
    assert (settings.device_token_secret, settings.device_token_ttl_s) == (None, 86400)
    assert (settings.sse_heartbeat_s, settings.sse_max_connections) == (15, 1000)
    assert settings.sse_device_max_connections == 4
