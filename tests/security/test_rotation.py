"""Rotating secrets without downtime: PUSH_TOKEN, API_TOKEN and DEVICE_TOKEN_SECRET take a
comma-separated list. An operator goes from `old` through `new,old` to `new` in three deployments
(README "Security"): add the new one first, move its users over, drop the old one. Each phase is an
ingress built from that phase's settings; what it accepts is what its callers see meanwhile."""

from __future__ import annotations

import time

from starlette.testclient import TestClient

from shared import device_tokens
from tests.conftest import ClientFactory
from tests.pushes import body, trigger_message
from tests.security.helpers import REGISTRATION, basic_auth

OLD_PUSH, NEW_PUSH = "push-old-0f3a", "push-new-9b1c"
OLD_API, NEW_API = "api-old-77d2", "api-new-1e4b"
OLD_SECRET, NEW_SECRET = "device-secret-old-0123456789", "device-secret-new-0123456789"


def phases(make_client: ClientFactory) -> dict[str, TestClient]:
    """Before (old only), during (new first, old still accepted), after (new only)."""
    lists = {"before": ("{old}",), "during": ("{new}", "{old}"), "after": ("{new}",)}
    built = {}
    for phase, order in lists.items():
        env = {
            name: ",".join(entry.format(old=old, new=new) for entry in order)
            for name, old, new in (
                ("PUSH_TOKEN", OLD_PUSH, NEW_PUSH),
                ("API_TOKEN", OLD_API, NEW_API),
                ("DEVICE_TOKEN_SECRET", OLD_SECRET, NEW_SECRET),
            )
        }
        built[phase] = make_client(**env)
    return built


def push_status(client: TestClient, token: str, position: int) -> set[int]:
    """The statuses of one push per place a token may travel (query, bearer, basic-auth password)."""
    content = body(trigger_message(position))
    replies = [
        client.post(f"/push?token={token}", content=content),
        client.post("/push", content=content, headers={"authorization": f"Bearer {token}"}),
        client.post("/push", content=content, headers={"authorization": basic_auth(token)}),
    ]
    return {reply.status_code for reply in replies}


def test_push_tokens_rotate_without_a_refused_push(make_client: ClientFactory) -> None:
    clients = phases(make_client)
    assert push_status(clients["before"], OLD_PUSH, 1) == {200}
    assert push_status(clients["before"], NEW_PUSH, 2) == {401}
    # GMS's customhttp.url still carries the old token while the new one is rolled out: both work.
    assert push_status(clients["during"], OLD_PUSH, 3) == {200}
    assert push_status(clients["during"], NEW_PUSH, 4) == {200}
    assert push_status(clients["after"], NEW_PUSH, 5) == {200}
    refused = clients["after"].post(f"/push?token={OLD_PUSH}", content=body(trigger_message(6)))
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"


def test_api_tokens_rotate_on_the_registry_and_token_minting(make_client: ClientFactory) -> None:
    clients = phases(make_client)

    def answers(client: TestClient, token: str) -> tuple[int, int]:
        auth = {"authorization": f"Bearer {token}"}
        registered = client.put("/sessions/s1", json=REGISTRATION, headers=auth)
        minted = client.post("/devices/d1/tokens", headers=auth)
        return registered.status_code, minted.status_code

    assert answers(clients["before"], OLD_API) == (204, 201)
    assert answers(clients["before"], NEW_API) == (401, 401)
    assert answers(clients["during"], OLD_API) == (204, 201)
    assert answers(clients["during"], NEW_API) == (204, 201)
    assert answers(clients["after"], NEW_API) == (204, 201)
    assert answers(clients["after"], OLD_API) == (401, 401)


def opens(client: TestClient, device_id: str, token: str) -> int:
    with client.stream(
        "GET", f"/devices/{device_id}/events", headers={"authorization": f"Bearer {token}"}
    ) as r:
        return r.status_code


def minted(client: TestClient, device_id: str) -> str:
    reply = client.post(f"/devices/{device_id}/tokens", headers={"authorization": f"Bearer {NEW_API}"})
    assert reply.status_code == 201, reply.text
    token: str = reply.json()["token"]
    return token


def test_device_tokens_of_a_retired_secret_are_refused(make_client: ClientFactory) -> None:
    clients = phases(make_client)
    issued_before = device_tokens.issue(OLD_SECRET, "d1", 3600, time.time())[0]
    assert opens(clients["before"], "d1", issued_before) == 200
    # During: devices keep their tokens; new ones are signed with the new secret, the first.
    assert opens(clients["during"], "d1", issued_before) == 200
    issued_during = minted(clients["during"], "d2")
    assert device_tokens.verify(NEW_SECRET, issued_during, time.time()) == "d2"
    assert device_tokens.verify(OLD_SECRET, issued_during, time.time()) is None
    assert opens(clients["during"], "d2", issued_during) == 200
    # After (a token lifetime later): the old secret's tokens are refused, the new one's still open.
    assert opens(clients["after"], "d2", issued_during) == 200
    refused = clients["after"].get("/devices/d1/events", headers={"authorization": f"Bearer {issued_before}"})
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
