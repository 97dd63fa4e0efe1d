"""The OpenAPI 3.1 document of the HTTP API the ingress serves, served at `GET /openapi.json`.

Built in Python rather than kept as a JSON file so that what it states (identifier and body limits,
positions, error codes, whether `/push` needs a token) is what the code enforces, taken from where it
lives: a limit or a setting that changes changes the document with it. It describes only the routes
the ingress really serves; the contract's endpoints that are not built yet join it when they are.
tests/ingress/test_openapi.py validates it with openapi-spec-validator and runs schemathesis against a
live ingress to check that every reply keeps to it. The components are in `ingress/openapi_schemas.py`.
The routes of other modules are described beside them (`ingress/openapi_devices.py`,
`ingress/openapi_chats.py`: each a TAG, ERROR_CODES, WHY, SCHEMAS, SECURITY_SCHEMES and
`paths(settings)`) and merged here. Error replies are components, one per status
(`#/components/responses/Error{status}`), listing the codes that status carries anywhere in the API.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec

from ingress import openapi_chats, openapi_devices
from ingress.openapi_schemas import (
    ERROR_CODES,
    IDENTIFIER,
    SCHEMAS,
    SECURITY_SCHEMES,
    WHY,
    error_response,
    json_reply,
    ref,
    status_reply,
)
from shared.settings import Settings

OPENAPI_VERSION = "3.1.0"


def _release() -> str:
    try:
        return version("gms-push-relay")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/Error{status}"} for status in statuses}


def _push(settings: Settings) -> dict[str, Any]:
    security: list[dict[str, list[str]]] = [{"pushQueryToken": []}, {"pushBearer": []}, {"pushBasic": []}]
    statuses: tuple[int, ...] = (400, 401, 413, 429, 503)
    if settings.push_token is None:  # the operator chose an open ingress: no token, nothing to throttle
        security, statuses = [{}], (400, 413, 503)
    return {
        "description": "Other methods: 405 `method_not_allowed`.",
        "post": {
            "operationId": "push",
            "summary": "Receive one GMS customhttp notification (GMS's `customhttp.url`)",
            "description": "Answered 200 once the notification is durably in Redis; nothing answered "
            "otherwise is stored. The body is parsed as JSON whatever its Content-Type says (GMS "
            f"documents none), and is at most `PUSH_MAX_BYTES` ({settings.push_max_bytes}) bytes.",
            "tags": ["push"],
            "security": security,
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref("PushBody")}}},
            "responses": {
                "200": json_reply(ref("PushReply"), "Stored durably (or recognised as already stored)."),
                **_errors(*statuses),
            },
        },
    }


def _sessions(settings: Settings, session_body_max_bytes: int) -> dict[str, Any]:
    disabled = "" if settings.api_token else " Disabled here (`API_TOKEN` unset): every request is 404."
    session_id = {
        "name": "sessionId",
        "in": "path",
        "required": True,
        "schema": IDENTIFIER,
        "description": "The chat's Chat API v2 `chatId` (may hold slashes).",
    }
    return {
        "description": "The session registry (Bearer `API_TOKEN`; 404 while it is unset)." + disabled,
        "parameters": [session_id],
        "put": {
            "operationId": "registerSession",
            "summary": "Register the credentials of a chat; its transcript is pulled once",
            "description": "Credentials live until the chat ends or `SESSION_IDLE_TTL_S` without "
            f"activity. The body is at most {session_body_max_bytes} bytes.",
            "tags": ["sessions"],
            "security": [{"apiBearer": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("SessionRegistration")}},
            },
            "responses": {
                "204": {"description": "Registered."},
                **_errors(400, 401, 404, 409, 413, 429, 503),
            },
        },
        "delete": {
            "operationId": "forgetSession",
            "summary": "Forget a chat's credentials and pending work (its cursor is kept)",
            "tags": ["sessions"],
            "security": [{"apiBearer": []}],
            "responses": {
                "204": {"description": "Forgotten (or never known)."},
                **_errors(400, 401, 404, 429, 503),
            },
        },
    }


def _get(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {"operationId": operation_id, "summary": summary, "tags": ["health"], "responses": responses}
    }


def _health() -> dict[str, Any]:
    alive = {"200": json_reply(status_reply("alive"), "The process is alive.")}
    text = {"text/plain": {"schema": {"type": "string"}}}
    document = {"type": "object", "required": ["openapi", "info", "paths"]}
    return {
        "/livez": _get("livez", "The process is alive", alive),
        "/healthz": _get("healthz", "The process is alive (the same as /livez)", alive),
        "/readyz": _get(
            "readyz",
            "Redis answers",
            {"200": json_reply(status_reply("ready"), "Redis answers."), **_errors(503)},
        ),
        "/metrics": _get(
            "metrics",
            "Prometheus metrics (text exposition format 0.0.4)",
            {
                "200": {
                    "description": "Push counters and latency, pipeline counters and depths.",
                    "content": text,
                }
            },
        ),
        "/openapi.json": _get(
            "openapi",
            "This document",
            {
                "200": json_reply(
                    {**document, "properties": {"openapi": {"const": OPENAPI_VERSION}}}, "OpenAPI 3.1."
                )
            },
        ),
    }


def _error_replies() -> dict[str, Any]:
    codes: dict[int, tuple[str, ...]] = {}
    why = {**openapi_devices.WHY, **openapi_chats.WHY, **WHY}  # a part explains only statuses it adds
    for table in (ERROR_CODES, openapi_devices.ERROR_CODES, openapi_chats.ERROR_CODES):
        for status, names in table.items():
            codes[status] = tuple(dict.fromkeys((*codes.get(status, ()), *names)))
    return {f"Error{status}": error_response(status, codes[status], why[status]) for status in sorted(codes)}


def _merged(*tables: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for table in tables:
        clash = merged.keys() & table.keys()
        assert not clash, f"two parts of the document define {sorted(clash)}"
        merged.update(table)
    return merged


def openapi_document(settings: Settings, session_body_max_bytes: int) -> dict[str, Any]:
    """The document of an ingress running with `settings` (its token needs and limits, what is
    disabled); `session_body_max_bytes` is the app's limit on a registration body."""
    own = {"/push": _push(settings), "/sessions/{sessionId}": _sessions(settings, session_body_max_bytes)}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "gms-push-relay ingress",
            "version": _release(),
            "summary": "Receiver for Genesys GMS customhttp chat push notifications.",
            "description": 'Errors are JSON `{"error": code, "detail": text}` with the statuses each '
            "operation lists. Unknown paths answer 404 `not_found`; a method a path does not serve "
            "answers 405 `method_not_allowed` with `Allow` (`Error405`).",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": name} for name in ("push", "sessions", openapi_devices.TAG, openapi_chats.TAG, "health")
        ],
        "paths": _merged(own, openapi_devices.paths(settings), openapi_chats.paths(settings), _health()),
        "components": {
            "schemas": _merged(SCHEMAS, openapi_devices.SCHEMAS, openapi_chats.SCHEMAS),
            "responses": _error_replies(),
            "securitySchemes": _merged(
                SECURITY_SCHEMES, openapi_devices.SECURITY_SCHEMES, openapi_chats.SECURITY_SCHEMES
            ),
        },
    }


def openapi_bytes(settings: Settings, session_body_max_bytes: int) -> bytes:
    """The document encoded once per app: `GET /openapi.json` sends these bytes."""
    return msgspec.json.encode(openapi_document(settings, session_body_max_bytes))
