"""No open push endpoint by accident (issue 16): GMS cannot sign its pushes, so the token in its URL
is their only proof of origin. An ingress process without PUSH_TOKEN refuses to start unless
ALLOW_OPEN_PUSH=true (then it says so at start-up and in /readyz), and a push without the token is
refused and reaches no sink."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import httpx
import pytest
import redis

from ingress.auth import OPEN_PUSH_WARNING
from shared import keys
from shared.redis_server import RedisServer, free_port
from simulator.receiver import WebhookReceiver
from tests.e2e.checks import stream
from tests.processes import relay_env, relay_processes, wait_for
from tests.pushes import body, event, payload_message
from tests.security.helpers import VALID_TRIGGER, basic_auth


@pytest.mark.parametrize("entry", [["gms_relay", "ingress"], ["ingress"]], ids=["gms-relay", "python-m"])
def test_the_ingress_refuses_to_start_without_a_push_token(
    redis_server: RedisServer, entry: list[str]
) -> None:
    env = relay_env(REDIS_URL=redis_server.url)
    del env["ALLOW_OPEN_PUSH"]
    argv = [sys.executable, "-m", *entry, "--host", "127.0.0.1", "--port", str(free_port())]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr  # one line, no traceback, no log noise
    assert result.stderr.startswith("gms-relay: configuration error: PUSH_TOKEN is not set")
    assert "ALLOW_OPEN_PUSH=true" in result.stderr


def test_allow_open_push_says_so_at_start_up_and_in_readyz(
    redis_server: RedisServer, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    with relay_processes(relay_env(REDIS_URL=redis_server.url), workers=0) as relay:  # ALLOW_OPEN_PUSH=true
        ready = httpx.get(f"{relay.base_url}/readyz", timeout=10)
        push = httpx.post(f"{relay.base_url}/push", content=VALID_TRIGGER, timeout=10)
    err = capfd.readouterr().err
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "warning": OPEN_PUSH_WARNING}
    assert push.status_code == 200  # open, as asked
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [e for e in logged if e["level"] == "warning" and e["msg"] == OPEN_PUSH_WARNING]


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_an_unauthenticated_payload_push_is_refused_and_reaches_no_sink(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    token = "push-" + secrets.token_hex(16)
    forged = body(payload_message([event(1, text="forged")], chat_id="s-forged"), device_id="d-victim")
    genuine = body(payload_message([event(1, text="genuine")], chat_id="s-genuine"), device_id="d-genuine")
    with WebhookReceiver() as receiver:
        env = relay_env(
            REDIS_URL=redis_server.url,
            GMS_URL="http://127.0.0.1:9",
            PUSH_TOKEN=token,
            WEBHOOK_URL=receiver.url,
        )
        with (
            relay_processes(env, workers=1) as relay,
            httpx.Client(base_url=relay.base_url, timeout=10) as http,
        ):
            refused = [
                http.post("/push", content=forged),
                http.post(f"/push?token={token[:-1]}", content=forged),
                http.post("/push", content=forged, headers={"authorization": "Bearer " + token.upper()}),
                http.post("/push", content=forged, headers={"authorization": basic_auth("guess")}),
            ]
            assert [r.status_code for r in refused] == [401] * 4
            assert {r.json()["error"] for r in refused} == {"unauthorized"}
            # A genuine push after the forged ones, through the same sinks: once it has reached both,
            # the worker has looked at everything stored before it.
            assert http.post(f"/push?token={token}", content=genuine).status_code == 200

            def genuine_delivered() -> bool:
                hooks = [d.json["data"]["deviceId"] for d in receiver.accepted()]
                return len(stream(redis_client, "d-genuine")) == 1 and "d-genuine" in hooks

            wait_for(genuine_delivered, timeout_s=60)
        assert not redis_client.exists(keys.stream("d-victim"))
        assert [d for d in receiver.accepted() if d.json["data"]["deviceId"] == "d-victim"] == []
        stored = [k.decode() for k in redis_client.scan_iter(count=1000)]
        assert [k for k in stored if "forged" in k or "victim" in k] == []
