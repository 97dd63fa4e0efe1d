"""`GET /demo` (DEMO=true only): the demo customer chat page, one HTML file with its own script.

The page is package data (ingress/static/demo.html): plain JavaScript, no build step. It is served with
a Content-Security-Policy that allows exactly its own inline script and style (by their SHA-256, taken
from the file at start-up) and requests to this origin only, so even a transcript line that got past
its textContent rendering could not run code, and the device token in its EventSource URL is never
sent to another site (no referrer, no framing).
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.settings import Settings


def _hashes(html: str, tag: str) -> str:
    """CSP sources for each inline `<tag>` block of the page, by the SHA-256 of its content."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    digests = (base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() for block in blocks)
    return " ".join(f"'sha256-{digest}'" for digest in digests)


def page_headers(html: str) -> dict[str, str]:
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hashes(html, 'script')}",
            f"style-src {_hashes(html, 'style')}",
            "connect-src 'self'",  # fetch (POST /chats, the chat actions) and EventSource
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }


def demo_routes(settings: Settings) -> list[Route]:
    """The demo page's route, or none without DEMO=true."""
    if not settings.demo:
        return []
    html = files("ingress").joinpath("static/demo.html").read_text(encoding="utf-8")
    body, headers = html.encode(), page_headers(html)

    async def demo(request: Request) -> Response:
        return Response(body, headers=headers, media_type="text/html; charset=utf-8")

    return [Route("/demo", demo, methods=["GET"])]
