"""GET /openapi.json: a valid OpenAPI 3.1 document of the whole API, and the ingress keeps to it.

Checked by tools nobody here wrote: openapi-spec-validator says the document is OpenAPI 3.1,
schemathesis fuzzes a live ingress (a real process on a real Redis) from the document and checks
every reply against it, and schemathesis's own response checks judge the error replies that a fuzzer
cannot reach on purpose (auth failures, the throttle, Redis down, an ended chat).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import httpx2
import pytest
import redis
import schemathesis
from openapi_spec_validator import validate
from schemathesis.specs.openapi import checks
from starlette.testclient import TestClient

from ingress.app import SESSION_BODY_MAX_BYTES
from ingress.openapi import openapi_document
from ingress.openapi_schemas import ERROR_CODES
from shared import keys
from shared.redis_server import RedisServer, free_port
from shared.settings import load_settings
from simulator.server import ChatServer
from tests.conftest import SettingsFactory
from tests.ingress.conftest import ClientFactory
from tests.processes import relay_env, relay_processes
from tests.pushes import body, trigger_message

PUSH_TOKEN, API_TOKEN = "push-secret", "api-secret"
API_AUTH = {"authorization": f"Bearer {API_TOKEN}"}
DEVICE = "schemathesis-never-generates-this-0f6b2c9e"
TOKENS = {"PUSH_TOKEN": PUSH_TOKEN, "API_TOKEN": API_TOKEN, "DEVICE_TOKEN_SECRET": "device-secret-0123456789"}
REGISTRATION = {"deviceId": "d1", "userId": "u1", "secureKey": "REST-KEY", "alias": "117"}
SERVED = {  # the documented operations: a route added to the app is added to the document and here
    "/push": {"post"},
    "/sessions/{sessionId}": {"put", "delete"},
    "/devices/{deviceId}/tokens": {"post"},
    "/devices/{deviceId}/events": {"get"},
    "/chats": {"post"},
    "/chats/{chatId}/messages": {"post"},
    "/chats/{chatId}/typing": {"post"},
    "/chats/{chatId}/disconnect": {"post"},
    "/livez": {"get"},
    "/healthz": {"get"},
    "/readyz": {"get"},
    "/metrics": {"get"},
    "/openapi.json": {"get"},
}
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
# What a reply must satisfy: a documented status, its content type, its schema, its headers.
CONFORMANCE = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


def served_document(client: TestClient) -> dict[str, Any]:
    reply = client.get("/openapi.json")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    document: dict[str, Any] = reply.json()
    return document


def conforms(document: dict[str, Any], path: str, reply: httpx2.Response) -> None:
    """Raise (schemathesis's failure) unless `reply` is one the document allows for its request."""
    operation = schemathesis.openapi.from_dict(document)[path][reply.request.method]
    sent = unquote(reply.request.url.raw_path.decode().partition("?")[0])
    template = re.escape(path).replace(r"\{", "{").replace(r"\}", "}")
    match = re.fullmatch(re.sub(r"{(\w+)}", r"(?P<\1>.+)", template), sent)
    assert match, (path, sent)
    operation.Case(path_parameters=match.groupdict()).validate_response(reply, checks=CONFORMANCE)


@pytest.mark.parametrize("env", [{}, {**TOKENS, "DEMO": "true"}], ids=["open", "tokens"])
def test_served_document_is_valid_openapi_3_1_of_what_is_served(
    make_client: ClientFactory, make_settings: SettingsFactory, env: dict[str, str]
) -> None:
    client = make_client(**env)
    document = served_document(client)
    validate(document)  # openapi-spec-validator: raises on anything that is not OpenAPI 3.1
    assert document["openapi"] == "3.1.0"
    served = {**SERVED, **({"/demo": {"get"}} if "DEMO" in env else {})}
    assert {path: set(item) & _METHODS for path, item in document["paths"].items()} == served
    assert document == openapi_document(make_settings(**env), SESSION_BODY_MAX_BYTES)
    conforms(document, "/openapi.json", client.get("/openapi.json"))


def test_push_security_follows_push_token(make_client: ClientFactory) -> None:
    open_push = served_document(make_client())["paths"]["/push"]["post"]
    assert open_push["security"] == [{}]
    assert "401" not in open_push["responses"]
    guarded = served_document(make_client(**TOKENS))
    schemes = guarded["components"]["securitySchemes"]
    alternatives = [
        name for requirement in guarded["paths"]["/push"]["post"]["security"] for name in requirement
    ]
    assert [
        (schemes[name]["type"], schemes[name].get("scheme", schemes[name].get("in"))) for name in alternatives
    ] == [
        ("apiKey", "query"),
        ("http", "bearer"),
        ("http", "basic"),
    ]
    assert schemes["pushQueryToken"]["name"] == "token"
    assert guarded["paths"]["/sessions/{sessionId}"]["put"]["security"] == [{"apiBearer": []}]
    # Each scheme really is accepted: the query token, the bearer token, the basic-auth password.
    client = make_client(**TOKENS)
    for request in (
        {"params": {"token": PUSH_TOKEN}},
        {"headers": {"authorization": f"Bearer {PUSH_TOKEN}"}},
        {"auth": ("gms", PUSH_TOKEN)},
    ):
        reply = client.post("/push", content=body(trigger_message(1)), **request)
        assert reply.status_code == 200, reply.text
        conforms(guarded, "/push", reply)
    refused = client.post("/push", content=body(trigger_message(1)))
    assert refused.status_code == 401
    conforms(guarded, "/push", refused)
    with pytest.raises(BaseExceptionGroup, match="Undocumented status code"):  # the check is not vacuous
        conforms(served_document(make_client()), "/push", refused)  # an open ingress never answers 401


def test_error_replies_conform_to_the_document(make_client: ClientFactory, redis_client: redis.Redis) -> None:
    client = make_client(**TOKENS, PUSH_MAX_BYTES="1024")
    document = served_document(client)
    push, session = f"/push?token={PUSH_TOKEN}", "/sessions/{sessionId}"
    api = {"authorization": f"Bearer {API_TOKEN}"}
    too_big = b" " * (SESSION_BODY_MAX_BYTES + 1)
    redis_client.set(keys.ended("s9"), "1")  # a chat that has ended
    replies = [
        ("/push", client.post(push, content=b"{"), 400, "invalid_json"),
        ("/push", client.post(push, content=b'{"deviceId": ""}'), 400, "invalid_push"),
        ("/push", client.post(push, content=b"x" * 2048), 413, "payload_too_large"),
        (session, client.put("/sessions/s1", content=b"[]", headers=api), 400, "invalid_push"),
        (session, client.delete("/sessions/%01", headers=api), 400, "invalid_push"),
        (session, client.put("/sessions/s1", content=too_big, headers=api), 413, "payload_too_large"),
        (session, client.put("/sessions/s9", json=REGISTRATION, headers=api), 409, "session_ended"),
        *[
            ("/push", client.post("/push?token=guess", content=body(trigger_message(1))), 401, "unauthorized")
            for _ in range(19)
        ],
        (
            session,
            client.delete("/sessions/s1", headers={"authorization": "Bearer guess"}),
            401,
            "unauthorized",
        ),
        ("/push", client.post(push, content=body(trigger_message(1))), 429, "too_many_failures"),
        (session, client.delete("/sessions/s1", headers=api), 429, "too_many_failures"),
    ]
    disabled = make_client(PUSH_TOKEN=PUSH_TOKEN)  # no API_TOKEN: the registry answers 404
    for path, reply, status, code in replies:
        assert (reply.status_code, reply.json()["error"]) == (status, code), reply.text
        assert code in ERROR_CODES[status]
        conforms(document, path, reply)
    reply = disabled.put("/sessions/s1", json=REGISTRATION, headers=api)
    assert (reply.status_code, reply.json()["error"]) == (404, "not_found")
    conforms(served_document(disabled), session, reply)


def test_redis_down_replies_conform(make_client: ClientFactory) -> None:
    client = make_client(**TOKENS, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    document = served_document(client)
    api = {"authorization": f"Bearer {API_TOKEN}"}
    for path, reply in (
        ("/push", client.post(f"/push?token={PUSH_TOKEN}", content=body(trigger_message(1)))),
        ("/sessions/{sessionId}", client.put("/sessions/s1", json=REGISTRATION, headers=api)),
        ("/sessions/{sessionId}", client.delete("/sessions/s1", headers=api)),
        ("/readyz", client.get("/readyz")),
    ):
        assert (reply.status_code, reply.json()["error"]) == (503, "redis_unavailable")
        conforms(document, path, reply)
    for path in ("/livez", "/metrics", "/openapi.json"):  # these need no Redis
        reply = client.get(path)
        assert reply.status_code == 200
        conforms(document, path, reply)


def test_an_unserved_method_is_405_with_allow_listing_the_documented_ones(make_client: ClientFactory) -> None:
    client = make_client(**TOKENS)
    document = served_document(client)
    for path, item in document["paths"].items():
        documented = {method.upper() for method in set(item) & _METHODS}
        url = re.sub(r"{\w+}", "s1", path)
        for method in sorted({"GET", "PUT", "POST", "DELETE", "PATCH", "TRACE"} - documented):
            reply = client.request(method, url)
            assert reply.status_code == 405, (method, path)
            assert reply.headers["content-type"] == "application/json"
            assert reply.json()["error"] == "method_not_allowed"
            allowed = {name.strip() for name in reply.headers["allow"].split(",")}
            assert allowed - {"HEAD"} == documented, (method, path)


def run_schemathesis(
    base_url: str, work_dir: Path, max_examples: int, device_token: str
) -> subprocess.CompletedProcess[str]:
    """The schemathesis CLI against a live ingress, with each security scheme's credentials. The
    device token is for a device schemathesis never names: chat actions and streams answer 403 or
    404 instead of 401s that would trip the throttle, and no stream is opened to hang the run."""
    config = work_dir / "schemathesis.toml"
    config.write_text(
        f'[auth.openapi.pushQueryToken]\napi_key = "{PUSH_TOKEN}"\n'
        f'[auth.openapi.pushBearer]\nbearer = "{PUSH_TOKEN}"\n'
        f'[auth.openapi.pushBasic]\nusername = "gms"\npassword = "{PUSH_TOKEN}"\n'
        f'[auth.openapi.apiBearer]\nbearer = "{API_TOKEN}"\n'
        f'[auth.openapi.deviceBearer]\nbearer = "{device_token}"\n'
        f'[auth.openapi.deviceQueryToken]\napi_key = "{device_token}"\n'
    )
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{base_url}/openapi.json",
        # What "conforms" means here. Not run: positive_data_acceptance / negative_data_rejection (the
        # ingress is liberal on purpose, gms-protocol.md, and "printable" or "notify-position when the
        # event is a PushUrl" are not JSON Schema), ignored_auth (its credential-less requests would
        # trip the 20-failures throttle and turn the rest of the run into 429s; the auth replies are
        # checked in test_error_replies_conform_to_the_document).
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance,unsupported_method,"
        "allow_header_conformance,use_after_free,ensure_resource_availability",
        "--generation-with-security-parameters",
        "false",  # send the configured tokens, never generated ones (the throttle again)
        "--max-examples",
        str(max_examples),
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=work_dir, check=False)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("tokens", [False, True], ids=["open", "tokens"])
def test_schemathesis_finds_no_server_error_and_no_reply_outside_the_document(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    chat_server: ChatServer,
    tmp_path: Path,
    tokens: bool,
) -> None:
    # Open: no PUSH_TOKEN, on purpose (ALLOW_OPEN_PUSH); every optional route disabled.
    env = (
        {**TOKENS, "GMS_URL": chat_server.base_url, "DEMO": "true"} if tokens else {"ALLOW_OPEN_PUSH": "true"}
    )
    with relay_processes(relay_env(REDIS_URL=redis_server.url, **env), workers=0) as relay:
        device_token = "none"
        if tokens:  # minted by the live ingress, for a device no generated request names
            minted = httpx.post(f"{relay.base_url}/devices/{DEVICE}/tokens", headers=API_AUTH, timeout=10)
            assert minted.status_code == 201, minted.text
            device_token = minted.json()["token"]
        result = run_schemathesis(relay.base_url, tmp_path, max_examples=30, device_token=device_token)
        assert relay.ingress is not None and relay.ingress.alive()
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-3000:]
    paths = openapi_document(load_settings({**env, "REDIS_URL": redis_server.url}), 0)["paths"]
    tested = sum(len(set(item) & _METHODS) for item in paths.values()) - 1  # all but /openapi.json itself
    assert f"{tested} selected / {tested} total" in result.stdout, result.stdout[-3000:]
