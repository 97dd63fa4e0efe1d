"""CORS for the browser-facing endpoints only: device streams, `/chats` and its actions, `/demo`.

A page on another origin (the operator's web app) may call them when its origin is in CORS_ORIGINS:
Starlette's CORSMiddleware answers preflights and adds the headers to the replies. Nothing else gets
CORS headers: `/push` is GMS's (dispatched before any of this, untouched), `/sessions` and
`/devices/{id}/tokens` take API_TOKEN, which no browser may hold, and the operational endpoints have
no browser callers. Without CORS_ORIGINS there is no middleware at all: same-origin pages (the demo)
need none, and a browser refuses every other origin.

Device tokens travel as `Authorization: Bearer` (or `?token=` on the SSE endpoint, which EventSource
cannot give headers), never as cookies, so credentials are not allowed: a page must hold the token.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

from ingress.replies import error_body

ALLOW_METHODS = ("GET", "POST")
ALLOW_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID")
EXPOSE_HEADERS = ("Retry-After",)  # a 429 or 503 says when to come back
PREFLIGHT_MAX_AGE_S = 600


def is_browser_path(path: str) -> bool:
    """The paths browsers call (their routes in ingress/app.py)."""
    return (
        path in ("/chats", "/demo")
        or path.startswith("/chats/")
        or (path.startswith("/devices/") and path.endswith("/events"))
    )


class _BrowserCors(CORSMiddleware):
    """A refused preflight answers in the relay's JSON error shape, like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.startswith("access-control-") or name == "vary"
        }
        detail = bytes(response.body).decode()  # "Disallowed CORS origin, headers": what was refused
        return Response(error_body("cors_refused", detail), 400, headers, "application/json")


def browser_cors(app: ASGIApp, origins: tuple[str, ...]) -> ASGIApp | None:
    """`app` behind CORS for `origins` (`*`: any), or None without any."""
    if not origins:
        return None
    return _BrowserCors(
        app,
        allow_origins=origins,
        allow_methods=ALLOW_METHODS,
        allow_headers=ALLOW_HEADERS,
        expose_headers=EXPOSE_HEADERS,
        max_age=PREFLIGHT_MAX_AGE_S,
    )
