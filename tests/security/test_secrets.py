"""Secrets and resource bounds (issue #7 item 3, issue #5 item 4): tokens are compared in constant
time and brute force is throttled; secure keys leave Redis when a chat ends and never reach logs,
metrics or error bodies; every key the relay writes expires; streams stay capped."""

from __future__ import annotations

import ast
import base64
import inspect
import secrets
import textwrap
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

import ingress.auth
from ingress.app import SessionRoutes
from ingress.push import PushEndpoint
from shared import keys
from shared.redis_server import RedisServer
from simulator.receiver import WebhookReceiver
from simulator.report import Report
from simulator.scenario import ModeChoice, ScenarioConfig, run_scenario
from simulator.server import ChatServer
from tests.conftest import SettingsFactory
from tests.e2e.checks import expected_end, wait_all_done
from tests.processes import RelayProcesses, relay_env, relay_processes, wait_for
from tests.pushes import body, event, payload_message, trigger_message
from tests.security.conftest import ClientFactory
from workers.context import WorkerContext, set_context

REGISTRATION = {"deviceId": "d1", "userId": "u1", "secureKey": "REST-KEY", "alias": "117"}
VALID_TRIGGER = body(trigger_message(1))


def _tokens() -> dict[str, str]:
    """Fresh secrets for one relay: any of them turning up in an output is a leak, not a coincidence."""
    return {
        "PUSH_TOKEN": "push-" + secrets.token_hex(16),
        "API_TOKEN": "api-" + secrets.token_hex(16),
        "WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
    }


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"gms:{password}".encode()).decode()


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
            headers[b"authorization"] = _basic(wrong).encode()
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
    for header, status in ((_basic(token), 401), (f"Token {token}", 401), (f"bearer {token}", 204)):
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


# A real pipeline: secure keys after the chat, in logs, metrics and error bodies ---------------------


@dataclass
class Run:
    relay: RelayProcesses
    report: Report
    tokens: dict[str, str]
    chat_keys: dict[str, str]  # label -> every REST and CometD key the chats had


@contextmanager
def _pipeline(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    chat_server: ChatServer,
    log_level: str = "WARNING",
    mode: ModeChoice = "reliable",
) -> Iterator[Run]:
    """Chats (reliable ones half with `secure-key` in their triggers, half registered with PUT
    /sessions) through an authenticated ingress, 2 workers and a signed webhook sink, until every
    chat is done on the stream and its webhooks are delivered. Yields with the relay still running."""
    tokens = _tokens()
    with WebhookReceiver() as receiver:
        env = relay_env(
            REDIS_URL=redis_server.url,
            GMS_URL=chat_server.base_url,
            WEBHOOK_URL=receiver.url,
            LOG_LEVEL=log_level,
            **tokens,
        )
        with relay_processes(env, workers=2) as relay:
            config = ScenarioConfig(
                chats=9,
                events_per_chat=8,
                rate=400.0,
                mode=mode,
                resend_delay_s=2.0,
                resend_attempts=10,
                duplicate_rate=0.1,
                flex_secure_key_rate=0.5,
                api_url=relay.base_url,
                api_token=tokens["API_TOKEN"],
                settle_timeout_s=60.0,
                seed=3,  # both credential paths among the reliable chats, in either mode
            )
            report = run_scenario(
                f"{relay.base_url}/push?token={tokens['PUSH_TOKEN']}", config, server=chat_server
            )
            assert report.totals.pushes_rejected == 0
            assert report.totals.registrations_failed == 0
            reliable = [c for c in report.chats if c.mode == "reliable"]
            assert {c.flex_secure_key for c in reliable} == {True, False}  # both credential paths
            assert report.totals.refreshes_ok > 0 and report.totals.refreshes_cometd_key == 0
            wait_all_done(redis_client, report, timeout_s=60)
            ending = {c.session_id for c in report.chats if c.mode != "wakeup" and expected_end(c)}
            assert ending

            def webhooks_done() -> bool:
                accepted = [d.json for d in receiver.accepted()]
                ended = {d["data"]["sessionId"] for d in accepted if d["type"] == "chat.ended"}
                return ended == ending and redis_client.zcard(keys.DELIVERIES) == 0

            wait_for(webhooks_done, timeout_s=30)
            chat_keys: dict[str, str] = {}
            for chat_id in (c.session_id for c in report.chats):
                chat = chat_server.store.get(chat_id)
                assert chat is not None
                chat_keys[f"REST secureKey of {chat_id}"] = chat.secure_key
                chat_keys[f"CometD secureKey of {chat_id}"] = chat.cometd_key
            yield Run(relay, report, tokens, chat_keys)


def _type(client: redis.Redis, key: bytes) -> str:
    kind = client.type(key)
    return kind.decode() if isinstance(kind, bytes) else str(kind)


def _every_value(client: redis.Redis) -> Iterator[tuple[str, bytes]]:
    """(key, blob) for every key name, member, field, value, score-less zset member and stream field
    of every key in Redis, with RQ's zlib-compressed job data decompressed."""
    for raw_key in client.scan_iter(count=1000):
        key = raw_key.decode()
        yield key, raw_key
        kind = _type(client, raw_key)
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


def _leaks(text: str | bytes, secrets_by_label: dict[str, str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [label for label, value in secrets_by_label.items() if value.encode() in data]


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_no_secure_key_remains_in_redis_after_the_chats_end(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    with _pipeline(redis_server, redis_client, chat_server) as run:
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
    with _pipeline(redis_server, redis_client, chat_server, log_level="DEBUG") as run:
        push, api = run.tokens["PUSH_TOKEN"], run.tokens["API_TOKEN"]
        sent_key = "sk-" + secrets.token_hex(12)  # a secure key sent in refused registrations
        with httpx.Client(base_url=run.relay.base_url, timeout=10.0) as http:
            metrics = http.get("/metrics")
            assert metrics.status_code == 200 and "gms_relay_events_delivered_total" in metrics.text
            refused = [
                (401, http.post(f"/push?token={push[:-1]}x", content=VALID_TRIGGER)),
                (401, http.post("/push", content=VALID_TRIGGER, headers={"authorization": f"Bearer {api}"})),
                (400, http.post(f"/push?token={push}", content=body(trigger_message("abc")))),
                (400, http.post("/push", content=b"{", headers={"authorization": _basic(push)})),
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
            metrics_after = http.get("/metrics").text
    out, err = capfd.readouterr()
    logs = out + err
    assert '"level":"debug"' in logs  # the relay's processes really logged at DEBUG
    everything = {**run.chat_keys, **run.tokens, "registration secureKey": sent_key}
    everything["webhook key (base64)"] = run.tokens["WEBHOOK_SECRET"].removeprefix("whsec_")
    assert _leaks(logs, everything) == []
    assert _leaks(metrics.text + metrics_after, everything) == []
    for text in replies:
        assert _leaks(text, everything) == [], text


# Every key expires ---------------------------------------------------------------------------------


def _unbounded(client: redis.Redis) -> list[str]:
    """Keys with no TTL, except the fixed-size global ones: the counters hash and RQ's own
    bookkeeping (`rq:*`), of which job hashes (`rq:job:*`) must still expire or be deleted."""
    found = []
    for raw_key in client.scan_iter(count=1000):
        key = raw_key.decode()
        if key == keys.COUNTERS or (key.startswith("rq:") and not key.startswith("rq:job:")):
            continue
        ttl = client.pttl(raw_key)
        if ttl == -1:
            found.append(f"{key} ({_type(client, raw_key)})")
    return sorted(found)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_every_key_the_relay_creates_expires_or_is_removed(
    redis_server: RedisServer, redis_client: redis.Redis, chat_server: ChatServer
) -> None:
    chat_server.faults.fail_refresh_http503 = 0.05  # retries and backoffs leave their own keys
    chat_server.faults.fail_refresh_status1 = 0.05
    with _pipeline(redis_server, redis_client, chat_server, mode="mixed"):
        # Give the drains still queued (and RQ's job hashes) their moment to finish.
        deadline = time.monotonic() + 10
        while _unbounded(redis_client) and time.monotonic() < deadline:
            time.sleep(0.1)
        offenders = _unbounded(redis_client)
        all_keys = sorted(k.decode() for k in redis_client.scan_iter(count=1000))
    assert offenders == [], f"keys without a TTL: {offenders}"
    assert keys.COUNTERS in all_keys
    assert any(key.startswith("gms-relay:ended:") for key in all_keys)  # the run left per-chat keys


# Stream length cap ---------------------------------------------------------------------------------


def test_stream_length_cap_holds(
    make_settings: SettingsFactory, make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    """STREAM_MAXLEN=20 with `XADD MAXLEN ~`: Redis only drops whole stream nodes (at most 100
    entries each, `stream-node-max-entries`), so a stream may exceed 20 by up to 99 entries, never
    grow with its input."""
    settings = make_settings(GMS_URL="http://127.0.0.1:9", STREAM_MAXLEN="20")
    client = make_client(STREAM_MAXLEN="20")
    context = WorkerContext.build(settings)
    set_context(context)
    queues = [Queue(q, connection=redis_client, serializer=JSONSerializer) for q in keys.QUEUES]
    lengths = []
    try:
        for first in range(1, 201, 10):
            events = [event(i) for i in range(first, first + 10)]
            reply = client.post("/push", content=body(payload_message(events), device_id="capped"))
            assert reply.json() == {"status": "queued"}
            SimpleWorker(queues, connection=redis_client, serializer=JSONSerializer).work(burst=True)
            lengths.append(redis_client.xlen(keys.stream("capped")))
    finally:
        set_context(None)
        context.close()
    assert redis_client.hget(keys.session("s1"), "cursor") == b"201"  # all 200 were delivered
    newest: list[tuple[bytes, dict[bytes, bytes]]] = redis_client.xrevrange(keys.stream("capped"), count=1)  # type: ignore[assignment]
    assert newest[0][1][b"index"] == b"200"
    assert max(lengths) <= 20 + 100 - 1, lengths
    assert lengths[-1] < 150, lengths


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
