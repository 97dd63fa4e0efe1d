"""GMS push -> relay -> device stream -> SSE, with real processes: `gms-relay ingress` and a worker,
a real Redis, the simulator's Chat API as GMS, and a real SSE client (httpx-sse)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from shared.redis_server import RedisServer
from simulator.server import ChatServer
from tests.processes import RelayProcesses, relay_env, relay_processes
from tests.pushes import body, event, payload_message

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

API_TOKEN = "e2e-api-token"
SECRET = "e2e-device-token-secret"
DEVICE = "device-e2e"


def mint(relay: RelayProcesses, device_id: str) -> str:
    reply = httpx.post(
        f"{relay.base_url}/devices/{device_id}/tokens",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        json={"ttlS": 600},
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    token = reply.json()["token"]
    assert isinstance(token, str)
    return token


def push(relay: RelayProcesses, events: list[dict[str, Any]]) -> int:
    message = body(payload_message(events, chat_id="s-e2e"), DEVICE)
    return httpx.post(f"{relay.base_url}/push", content=message, timeout=10).status_code


@pytest.fixture
def relay(
    redis_server: RedisServer, redis_client: object, chat_server: ChatServer
) -> Iterator[RelayProcesses]:
    env = relay_env(
        REDIS_URL=redis_server.url,
        GMS_URL=chat_server.base_url,
        API_TOKEN=API_TOKEN,
        DEVICE_TOKEN_SECRET=SECRET,
        SSE_SEND_TIMEOUT_S="600",  # the unread stream below stays open for the whole test
        PUSH_MAX_BYTES="1100000",  # pushes of 10 events of 100 kB
    )
    with relay_processes(env, workers=1) as processes:
        yield processes


def stalled_stream(relay: RelayProcesses, path: str) -> socket.socket:
    """A client that opens its stream and never reads it, with a tiny receive buffer: its socket
    fills at once, so the ingress's sends to it stall."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: it sets the window
    sock.connect(("127.0.0.1", relay.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
    assert sock.recv(12) == b"HTTP/1.1 200"
    return sock


def test_pushes_reach_the_device_stream_live_and_a_stalled_reader_delays_nothing(
    relay: RelayProcesses,
) -> None:
    token = mint(relay, DEVICE)
    path = f"/devices/{DEVICE}/events?token={token}"
    stalled = stalled_stream(relay, path)
    # 60 events of 100 kB, 6 MB: beyond what the socket buffers hold (loopback's grow to 4 MB).
    sent = [event(i, text=f"{i} " + "x" * 100_000) for i in range(1, 61)]
    statuses: list[int] = []
    received: list[ServerSentEvent] = []
    with httpx.Client(timeout=30) as http, connect_sse(http, "GET", relay.base_url + path) as source:
        messages = source.iter_sse()
        pusher = threading.Thread(
            target=lambda: statuses.extend(push(relay, sent[i : i + 10]) for i in range(0, 60, 10))
        )
        pusher.start()
        for message in messages:
            received.append(message)
            if len(received) == len(sent):
                break
        pusher.join(60)
    stalled.close()
    assert statuses == [200] * 6  # GMS's pushes were answered while the stalled stream was stuck
    data = [json.loads(m.data) for m in received]
    assert [d["index"] for d in data] == list(range(1, 61))  # every event once, in index order
    assert all(d["type"] == "Message" and d["sessionId"] == "s-e2e" for d in data)
    assert [d["data"] for d in data] == sent  # the event JSON as GMS sent it
    assert len({m.id for m in received}) == 60
