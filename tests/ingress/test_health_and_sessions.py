"""Health endpoints, the session registry, and behaviour when Redis goes away."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from ingress.app import create_app
from shared import keys
from shared.redis_server import RedisServer
from shared.settings import load_settings
from tests.ingress.conftest import ClientFactory
from tests.pushes import body, trigger_message

REGISTRATION = {"deviceId": "d1", "userId": "u1", "secureKey": "REST-KEY", "alias": "117"}


def test_livez_healthz_readyz(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "alive"}
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_unknown_path_is_json_404(client: TestClient) -> None:
    reply = client.get("/nope")
    assert reply.status_code == 404
    assert reply.json()["error"] == "not_found"


def test_sessions_are_404_without_api_token(client: TestClient) -> None:
    assert client.put("/sessions/s1", json=REGISTRATION).status_code == 404


def test_sessions_refuse_without_the_api_token(make_client: ClientFactory, redis_client: redis.Redis) -> None:
    client = make_client(API_TOKEN="api-t")
    assert client.put("/sessions/s1", json=REGISTRATION).status_code == 401
    bad = client.put("/sessions/s1", json=REGISTRATION, headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert client.delete("/sessions/s1").status_code == 401
    assert redis_client.dbsize() == 0


def test_session_token_guesses_are_throttled_with_push_guesses(
    make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    client = make_client(API_TOKEN="api-t", PUSH_TOKEN="push-t")
    auth = {"authorization": "Bearer api-t"}
    guesses = [
        client.put("/sessions/s1", json=REGISTRATION, headers={"authorization": f"Bearer g{i}"}).status_code
        for i in range(20)
    ]
    assert guesses == [401] * 20
    throttled = client.put("/sessions/s1", json=REGISTRATION, headers=auth)  # even the right token
    assert throttled.status_code == 429
    assert throttled.json()["error"] == "too_many_failures"
    assert client.post("/push?token=push-t", content=body(trigger_message(1))).status_code == 429
    assert redis_client.dbsize() == 0


def test_register_then_forget(make_client: ClientFactory, redis_client: redis.Redis) -> None:
    client = make_client(API_TOKEN="api-t")
    auth = {"authorization": "Bearer api-t"}
    assert client.put("/sessions/s1", json=REGISTRATION, headers=auth).status_code == 204
    assert redis_client.hget(keys.credentials("s1"), "secureKey") == b"REST-KEY"
    assert redis_client.hget(keys.session("s1"), "alias") == b"117"
    # Two lifetimes: credentials SESSION_IDLE_TTL_S (26 h), the rest CHAT_STATE_TTL_S (8 days).
    assert 0 < redis_client.pttl(keys.credentials("s1")) <= 93600 * 1000
    assert 93600 * 1000 < redis_client.pttl(keys.session("s1")) <= 691200 * 1000
    assert redis_client.get(keys.device("d1")) == b"s1"
    assert redis_client.zscore(keys.DIRTY, "s1") is not None  # registration pulls the transcript
    assert client.delete("/sessions/s1", headers=auth).status_code == 204
    assert not redis_client.exists(keys.credentials("s1"), keys.device("d1"))
    assert redis_client.zscore(keys.DIRTY, "s1") is None


def test_register_rejects_bad_bodies(make_client: ClientFactory) -> None:
    client = make_client(API_TOKEN="api-t")
    auth = {"authorization": "Bearer api-t"}
    assert client.put("/sessions/s1", content=b"{", headers=auth).status_code == 400
    assert client.put("/sessions/s1", json={"deviceId": "d1"}, headers=auth).status_code == 400
    assert client.put("/sessions/s1", content=b"x" * 20000, headers=auth).status_code == 413


def test_metrics_counts_pushes(client: TestClient) -> None:
    client.post("/push", content=body(trigger_message(1)))
    client.post("/push", content=b"{")
    text = client.get("/metrics").text
    assert 'gms_relay_pushes_total{kind="trigger",outcome="queued"} 1.0' in text
    assert 'gms_relay_pushes_total{kind="unknown",outcome="invalid_json"} 1.0' in text
    assert 'gms_relay_queue_depth{queue="gms_relay"} 1' in text


def test_redis_down_is_503_then_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    settings = load_settings({"REDIS_URL": server.url})
    try:
        with TestClient(create_app(settings)) as client:
            assert client.post("/push", content=body(trigger_message(1))).status_code == 200
            server.stop()
            down = client.post("/push", content=body(trigger_message(2)))
            assert down.status_code == 503
            assert down.json()["error"] == "redis_unavailable"
            assert client.get("/readyz").status_code == 503
            assert client.get("/livez").status_code == 200
            server.start()
            assert client.post("/push", content=body(trigger_message(3))).status_code == 200
            assert client.get("/readyz").status_code == 200
        check = redis.Redis.from_url(server.url)
        assert check.hget(keys.session("s1"), "gen") == b"2"  # pushes 1 and 3; the 503 stored nothing
        check.close()
    finally:
        server.stop()


@pytest.mark.timeout(30)
def test_stuck_redis_answers_503_without_hanging(tmp_path: Path) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP) must not hang GMS."""
    import os
    import signal

    server = RedisServer(tmp_path)
    server.start()
    assert server.process is not None
    try:
        with TestClient(create_app(load_settings({"REDIS_URL": server.url}))) as client:
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                reply = client.post("/push", content=body(trigger_message(1)))
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            assert reply.status_code == 503
    finally:
        server.stop()
