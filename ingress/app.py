"""The ingress application: `create_app(settings)` builds it; nothing is read at import time."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingress.auth import OPEN_PUSH_WARNING, FailureThrottle, bearer_ok
from ingress.bodies import bounded_body
from ingress.chats import ChatRoutes
from ingress.cors import browser_cors, is_browser_path
from ingress.demo import demo_routes
from ingress.device_streams import DeviceStreams
from ingress.device_tokens_api import DeviceTokenRoutes
from ingress.metrics import IngressMetrics, live_workers
from ingress.openapi import openapi_bytes
from ingress.push import PushEndpoint
from ingress.replies import error_body
from ingress.store import IngressStore
from shared import keys, metrics
from shared.classify import MAX_ID_CHARS
from shared.errors import (
    InvalidJson,
    InvalidPush,
    RelayError,
    TooManyFailures,
    Unauthorized,
)
from shared.models import SessionRegistration
from shared.settings import Settings

SESSION_BODY_MAX_BYTES = 16384
_REGISTRATION = msgspec.json.Decoder(SessionRegistration)


def _json_error(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(error_body(code, detail), status, headers=headers, media_type="application/json")


async def _relay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelayError)
    return _json_error(exc.status, exc.code, exc.detail)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    # exc.headers carries the router's `Allow` on a 405, which RFC 9110 requires (schemathesis found it lost).
    return _json_error(exc.status_code, code, str(exc.detail), exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _json_error(500, "internal", "internal error")  # never leak internals


def _check_id(value: str, name: str) -> None:
    if not value or len(value) > MAX_ID_CHARS or not value.isprintable():
        raise InvalidPush(f"{name}: expected 1 to {MAX_ID_CHARS} printable characters")


class SessionRoutes:
    """PUT/DELETE /sessions/{sessionId}: credentials for chats whose triggers carry no secure key."""

    def __init__(self, store: IngressStore, throttle: FailureThrottle) -> None:
        self.store = store
        self.token = store.settings.api_token
        self.throttle = throttle

    async def handle(self, request: Request) -> Response:
        if self.token is None:
            raise HTTPException(404, "session registry is disabled (API_TOKEN unset)")
        address = request.client.host if request.client else ""
        if self.throttle.blocked(address):
            raise TooManyFailures("too many failed authentications")
        if not bearer_ok(self.token, request.headers.get("authorization")):
            self.throttle.failed(address)
            raise Unauthorized("missing or wrong API token")
        session_id = request.path_params["session_id"]
        _check_id(session_id, "sessionId")
        if request.method == "DELETE":
            await self.store.forget(session_id)
            return Response(status_code=204)
        body = await bounded_body(request, SESSION_BODY_MAX_BYTES)
        try:
            registration = _REGISTRATION.decode(body)
        except msgspec.ValidationError as exc:
            raise InvalidPush(str(exc)) from None
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise InvalidJson("body is not valid JSON") from None
        for value, name in (
            (registration.deviceId, "deviceId"),
            (registration.userId, "userId"),
            (registration.secureKey, "secureKey"),
        ):
            _check_id(value, name)
        outcome = await self.store.register(session_id, registration)
        if outcome == "ended":
            return _json_error(409, "session_ended", "this chat has already ended")
        return Response(status_code=204)


def create_app(settings: Settings, store: IngressStore | None = None) -> Any:
    """The ASGI app. `/push` is dispatched before Starlette's router: it is the hot path."""
    store = store or IngressStore(settings)
    ingress_metrics = IngressMetrics()
    throttle = FailureThrottle()  # one per process, shared: a guess at either token counts
    push = PushEndpoint(store, ingress_metrics, throttle)

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    ready = {"status": "ready"}
    if settings.push_token is None and settings.allow_open_push:  # else the process refuses to start
        ready["warning"] = OPEN_PUSH_WARNING

    async def readyz(request: Request) -> Response:
        if await store.ping():
            return JSONResponse(ready)
        return _json_error(503, "redis_unavailable", "Redis is unreachable")

    async def metrics_endpoint(request: Request) -> Response:
        text = ingress_metrics.render().decode()
        with contextlib.suppress(Exception):
            text += await _pipeline_metrics(store)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    document = openapi_bytes(settings, SESSION_BODY_MAX_BYTES)  # encoded once: it follows the settings

    async def openapi_endpoint(request: Request) -> Response:
        return Response(document, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await store.close()
        await chats.aclose()
        await streams.close()

    sessions = SessionRoutes(store, throttle)
    chats = ChatRoutes(store, throttle)  # POST /chats and the chat actions (device tokens)
    streams = DeviceStreams(settings)  # its own Redis connections: a stream never waits on /push's
    tokens = DeviceTokenRoutes(settings, throttle)
    starlette = Starlette(
        routes=[
            Route("/livez", livez),
            Route("/healthz", livez),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/openapi.json", openapi_endpoint),
            Route("/sessions/{session_id:path}", sessions.handle, methods=["PUT", "DELETE"]),
            *chats.routes(),
            *demo_routes(settings),  # none unless DEMO=true
            Route("/devices/{device_id}/events", streams.handle, methods=["GET"]),
            Route("/devices/{device_id}/tokens", tokens.handle, methods=["POST"]),
        ],
        exception_handlers={
            RelayError: _relay_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )

    cors = browser_cors(starlette, settings.cors_origins)  # None without CORS_ORIGINS

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/push":
            await push(scope, receive, send)
        elif cors is not None and scope["type"] == "http" and is_browser_path(scope["path"]):
            await cors(scope, receive, send)  # the device streams, /chats and /demo only
        else:
            await starlette(scope, receive, send)

    app.state = starlette.state  # type: ignore[attr-defined]
    return app


async def _pipeline_metrics(store: IngressStore) -> str:
    pipe = store.client.pipeline(transaction=False)
    pipe.hgetall(keys.COUNTERS)
    for queue in keys.QUEUES:
        pipe.llen(keys.rq_queue(queue))
        pipe.zcard(f"rq:failed:{queue}")
    # Members of chats whose state expired while parked linger until the next park prunes them.
    pipe.zcount(keys.PARKED, time.time_ns() // 1_000_000 - store.settings.chat_state_ttl_s * 1000, "+inf")
    pipe.zcard(keys.DIRTY)
    results = await pipe.execute()
    # Parked: chats waiting for credentials (PUT /sessions); each emitted chat.credentials_required.
    depths = {"chats_dirty": results[-1], "chats_parked": results[-2]}
    depths["workers"] = await live_workers(store.client)
    for i, queue in enumerate(keys.QUEUES):
        name = queue.replace("-", "_")
        depths[f'queue_depth{{queue="{name}"}}'] = results[1 + 2 * i]
        depths[f'dead_letters{{queue="{name}"}}'] = results[2 + 2 * i]
    return metrics.render(results[0], depths)
