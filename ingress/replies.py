"""Raw ASGI replies for the hot path: pre-encoded JSON, no Response object allocation."""

from __future__ import annotations

from typing import Any

import msgspec

Send = Any

_JSON = (b"content-type", b"application/json")


async def reply(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_body(code: str, detail: str) -> bytes:
    """The contract's error shape: {"error": code, "detail": text}."""
    return msgspec.json.encode({"error": code, "detail": detail})
