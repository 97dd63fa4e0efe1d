"""The ingress's Chat API v2 client: Request Chat, and Send / typing / Disconnect on a customer's behalf.

The workers' Refresh client (shared/form_client.py) is synchronous and per thread; the ingress serves
every request on one event loop, so it talks to GMS with an `httpx.AsyncClient` instead. Each call has
one deadline for the whole exchange (`asyncio.timeout`: connect, send, the whole reply), as GMS may
hang; replies are read up to a bound. Like the workers: no proxy (GMS sits beside the relay), `https://`
verified against the system CAs (`SSL_CERT_FILE` points at a private bundle), and credentials in
`GMS_URL` sent as HTTP basic auth and never logged.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx
import msgspec

from shared.gms import Credentials
from shared.models import CHAT_RESPONSE_DECODER, ChatResponse

# A Request Chat, Send or Disconnect reply is a few hundred bytes; anything this big is not one.
MAX_REPLY_BYTES = 256 * 1024
_log = logging.getLogger("ingress.gms_chat")


class Verdict(enum.Enum):
    OK = "ok"
    REFUSED = "refused"  # statusCode 2 or HTTP 4xx: GMS will not do it (ended chat, bad credentials)
    UNAVAILABLE = "unavailable"  # transport error, deadline, HTTP 5xx, statusCode 1, not a Chat API reply


@dataclass(frozen=True)
class Reply:
    verdict: Verdict
    response: ChatResponse | None
    reason: str  # for the log: never a key, never GMS's body


class _TooBig(Exception):
    pass


def _split_credentials(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """`https://user:password@host/` -> (`https://host/`, basic auth), so the URL alone is loggable."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
    return urlunsplit(parts._replace(netloc=netloc)), auth


class GmsChat:
    """Chat API v2 calls under `{base_url}/genesys/2/chat/{service}`. Build it inside the event loop
    that uses it (the ingress's); `aclose()` on shutdown."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        base, auth = _split_credentials(base_url.rstrip("/"))
        self.base_url = base
        self.timeout_s = timeout_s
        self.client = httpx.AsyncClient(
            auth=auth,
            verify=ssl.create_default_context(),  # the system CAs (and SSL_CERT_FILE), as the workers
            trust_env=False,  # no proxy from the environment: GMS is reached directly
            timeout=timeout_s,  # per step; the whole call is bounded by asyncio.timeout below
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            follow_redirects=False,
        )

    async def request_chat(self, service: str, form: dict[str, str]) -> Reply:
        """Request Chat: `nickname`, `subject`, `userData[key]` form parameters."""
        return await self._post(quote(service, safe=""), form)

    async def act(
        self, service: str, chat_id: str, action: str, creds: Credentials, form: dict[str, str]
    ) -> Reply:
        """`send`, `startTyping`, `stopTyping` or `disconnect` with the chat's REST credentials."""
        path = "/".join(quote(p, safe="") for p in (service, chat_id, action))
        return await self._post(path, {**creds.form(), **form})

    async def _post(self, path: str, form: dict[str, str]) -> Reply:
        url = f"{self.base_url}/genesys/2/chat/{path}"
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.client.stream("POST", url, data=form) as response:
                    status = response.status_code
                    content = await _read_bounded(response)
        except TimeoutError:
            return _unavailable(url, "deadline")
        except _TooBig:
            return _unavailable(url, "reply too large")
        except httpx.HTTPError as exc:
            return _unavailable(url, type(exc).__name__)
        try:
            decoded = CHAT_RESPONSE_DECODER.decode(content) if content else None
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            decoded = None
        if status >= 500 or (decoded is not None and decoded.statusCode == 1):
            return _unavailable(url, f"http {status}, statusCode {getattr(decoded, 'statusCode', None)}")
        if 400 <= status < 500 or (decoded is not None and decoded.statusCode == 2):
            codes = [e.get("code") for e in (decoded.errors or [])] if decoded is not None else []
            _log.info("GMS refused %s: http %s, error codes %s", url, status, codes)
            return Reply(Verdict.REFUSED, decoded, f"http {status}")
        if status != 200 or decoded is None or decoded.statusCode != 0:
            return _unavailable(url, f"http {status}, not a Chat API reply")
        return Reply(Verdict.OK, decoded, "ok")

    async def aclose(self) -> None:
        await self.client.aclose()


async def _read_bounded(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_REPLY_BYTES:
            raise _TooBig
    return bytes(body)


def _unavailable(url: str, reason: str) -> Reply:
    _log.warning("GMS Chat API call to %s failed: %s", url, reason)
    return Reply(Verdict.UNAVAILABLE, None, reason)
