"""Request bodies read with a bound: a client cannot make the ingress buffer more than it accepts."""

from __future__ import annotations

from starlette.requests import Request

from shared.errors import PayloadTooLarge


async def bounded_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it passes `max_bytes` (413)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
