"""Leaks (issue #7 item 3): secure keys leave Redis with the chat; no secret in logs, metrics or errors."""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Iterator

import httpx
import pytest
import redis

from shared.redis_server import RedisServer
from simulator.server import ChatServer
from tests.pushes import body, trigger_message
from tests.security.helpers import (
    BROWSER_ORIGIN,
    REGISTRATION,
    VALID_TRIGGER,
    basic_auth,
    key_type,
    pipeline,
)


def _every_value(client: redis.Redis) -> Iterator[tuple[str, bytes]]:
    """(key, blob) for every key name, member, field, value, score-less zset member and stream field
    of every key in Redis, with RQ's zlib-compressed job data decompressed."""
    for raw_key in client.scan_iter(count=1000):
        key = raw_key.decode()
        yield key, raw_key
        kind = key_type(client, raw_key)
        blobs: list[bytes]
        if kind == "string":
            value = client.get(raw_key) or b""
            blobs = [value.encode() if isinstance(value, str) else value]
        elif kind == "hash":
            fields: dict[bytes, bytes] = client.hgetall(raw_key)  # type: ignore[assignment]
            blobs = [*fields, *fields.values()]
            if key.startswith("rq:job:") and b"data" in fields:
                try:  # RQ compresses job data; the relay's Lua writes it plain, which RQ also reads
                    blobs.append(zlib.decompress(fields[b"data"]))
                except zlib.error:
                    blobs.append(fields[b"data"])
        elif kind == "list":
            blobs = client.lrange(raw_key, 0, -1)  # type: ignore[assignment]
        elif kind == "set":
            blobs = list(client.smembers(raw_key))  # type: ignore[arg-type]
        elif kind == "zset":
            blobs = client.zrange(raw_key, 0, -1)  # type: ignore[assignment]
        elif kind == "stream":
            entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(raw_key)  # type: ignore[assignment]
            blobs = [part for _, entry in entries for item in entry.items() for part in item]
        elif kind == "none":  # expired while we looked
            continue
        else:
            raise AssertionError(f"{key}: unexpected type {kind}")
        for blob in blobs:
            yield key, blob


def _read_a_device_stream(http: httpx.Client, device_id: str, api_token: str) -> tuple[str, list[str]]:
    """What a browser does: a device token minted by the app's server, the device's stream opened
    with it in the query string (EventSource), from an allowed origin; and what it is refused. Returns
    the token and the refusals' bodies."""
    minted = http.post(f"/devices/{device_id}/tokens", headers={"authorization": f"Bearer {api_token}"})
    assert minted.status_code == 201, minted.text
    token: str = minted.json()["token"]
    with http.stream(
        "GET", f"/devices/{device_id}/events?token={token}", headers={"origin": BROWSER_ORIGIN}
    ) as stream:
        assert stream.status_code == 200 and stream.headers["access-control-allow-origin"] == BROWSER_ORIGIN
        assert next(line for line in stream.iter_lines() if line.startswith("data: "))
    refused = [
        http.get(f"/devices/{device_id}/events?token={token[:-2]}xx"),  # forged
        http.get(f"/devices/{device_id}x/events?token={token}"),  # another device's
        http.post(f"/chats/some-chat/typing?token={token}"),  # a query token opens streams only
    ]
    assert [r.status_code for r in refused] == [401, 403, 401]
    return token, [r.text for r in refused]


def _leaks(text: str | bytes, secrets_by_label: dict[str, str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [label for label, value in secrets_by_label.items() if value.encode() in data]


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_no_secure_key_remains_in_redis_after_the_chats_end(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    with pipeline(redis_server, redis_client, chat_server) as run:
        values = list(_every_value(redis_client))
    found = sorted({f"{label} in {key}" for key, blob in values for label in _leaks(blob, run.chat_keys)})
    assert found == [], found
    scanned = {key for key, _ in values}
    assert any(key.startswith("gms-relay:ended:") for key in scanned)  # the scan saw the chats' traces
    assert any(key.startswith("gms-relay:events:") for key in scanned)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_no_secret_reaches_logs_metrics_or_error_bodies(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    chat_server: ChatServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    capfd.readouterr()
    replies: list[str] = []
    with pipeline(redis_server, redis_client, chat_server, log_level="DEBUG") as run:
        push, api = run.tokens["PUSH_TOKEN"], run.tokens["API_TOKEN"]
        sent_key = "sk-" + secrets.token_hex(12)  # a secure key sent in refused registrations
        with httpx.Client(base_url=run.relay.base_url, timeout=10.0) as http:
            metrics = http.get("/metrics")
            assert metrics.status_code == 200 and "gms_relay_events_delivered_total" in metrics.text
            refused = [
                (401, http.post(f"/push?token={push[:-1]}x", content=VALID_TRIGGER)),
                (401, http.post("/push", content=VALID_TRIGGER, headers={"authorization": f"Bearer {api}"})),
                (400, http.post(f"/push?token={push}", content=body(trigger_message("abc")))),
                (400, http.post("/push", content=b"{", headers={"authorization": basic_auth(push)})),
                (
                    401,
                    http.put("/sessions/s9", json=REGISTRATION, headers={"authorization": f"Bearer {push}"}),
                ),
                (
                    400,
                    http.put(
                        "/sessions/s9",
                        json={**REGISTRATION, "secureKey": sent_key, "alias": {"x": sent_key}},
                        headers={"authorization": f"Bearer {api}"},
                    ),
                ),
                (
                    400,
                    http.put(
                        "/sessions/s9",
                        json={**REGISTRATION, "secureKey": sent_key + "\n"},
                        headers={"authorization": f"Bearer {api}"},
                    ),
                ),
            ]
            for status, reply in refused:
                assert reply.status_code == status, reply.text
                replies.append(reply.text)
            device_token, browser_replies = _read_a_device_stream(http, run.report.chats[0].device_id, api)
            replies += browser_replies
            metrics_after = http.get("/metrics").text
    out, err = capfd.readouterr()
    logs = out + err
    assert '"level":"debug"' in logs  # the relay's processes really logged at DEBUG
    everything = {**run.chat_keys, **run.tokens, "registration secureKey": sent_key}
    everything["device token (its signature)"] = device_token.rpartition(".")[2]
    everything["webhook key (base64)"] = run.tokens["WEBHOOK_SECRET"].removeprefix("whsec_")
    assert _leaks(logs, everything) == []
    assert _leaks(metrics.text + metrics_after, everything) == []
    for text in replies:
        assert _leaks(text, everything) == [], text
