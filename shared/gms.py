"""Chat API v2 client (httpx, pooled, with timeouts): Refresh for the workers; Request Chat and
Send for the simulator and the demo.

Refresh uses the REST credentials (userId, secureKey from the trigger's userData or the session
registry) and the newest alias; never the obfuscated `secureKey` member of a push message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import quote

import httpx
import msgspec

from shared.models import CHAT_RESPONSE_DECODER, ChatResponse


class RefreshVerdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # statusCode 1, HTTP 5xx, timeouts, connection errors
    FATAL = "fatal"  # statusCode 2, HTTP 400 (agent disconnected): the chat is over


@dataclass(frozen=True)
class RefreshResult:
    verdict: RefreshVerdict
    response: ChatResponse | None
    reason: str


@dataclass(frozen=True)
class Credentials:
    user_id: str
    secure_key: str
    alias: str

    def form(self) -> dict[str, str]:
        return {"userId": self.user_id, "secureKey": self.secure_key, "alias": self.alias}

    def __repr__(self) -> str:  # never print the key
        return f"Credentials(user_id={self.user_id!r}, alias={self.alias!r})"


class ChatApi:
    def __init__(self, base_url: str, timeout_s: float, client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client or httpx.Client(
            # One client serves every chat: a cookie GMS sets for one must never ride along with another.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    def _url(self, service: str, *parts: str) -> str:
        path = "/".join(quote(p, safe="") for p in (service, *parts))
        return f"{self.base_url}/genesys/2/chat/{path}"

    def refresh(self, service: str, session_id: str, creds: Credentials, position: int) -> RefreshResult:
        form = {**creds.form(), "transcriptPosition": str(position)}
        try:
            reply = self.client.post(self._url(service, session_id, "refresh"), data=form)
        except httpx.TimeoutException:
            return RefreshResult(RefreshVerdict.RETRY, None, "timeout")
        except httpx.HTTPError as exc:
            return RefreshResult(RefreshVerdict.RETRY, None, type(exc).__name__)
        if reply.status_code == 400:
            return RefreshResult(RefreshVerdict.FATAL, None, "http_400")
        if reply.status_code != 200:
            return RefreshResult(RefreshVerdict.RETRY, None, f"http_{reply.status_code}")
        try:
            response = CHAT_RESPONSE_DECODER.decode(reply.content)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return RefreshResult(RefreshVerdict.RETRY, None, "bad_response")
        if response.statusCode == 2:
            return RefreshResult(RefreshVerdict.FATAL, response, "status_2")
        if response.statusCode != 0:
            return RefreshResult(RefreshVerdict.RETRY, response, f"status_{response.statusCode}")
        return RefreshResult(RefreshVerdict.OK, response, "ok")

    def request_chat(self, service: str, nickname: str, user_data: dict[str, str]) -> ChatResponse:
        form = {"nickname": nickname, **{f"userData[{k}]": v for k, v in user_data.items()}}
        reply = self.client.post(self._url(service), data=form)
        reply.raise_for_status()
        return CHAT_RESPONSE_DECODER.decode(reply.content)

    def send(self, service: str, session_id: str, creds: Credentials, message: str) -> ChatResponse:
        reply = self.client.post(
            self._url(service, session_id, "send"), data={**creds.form(), "message": message}
        )
        reply.raise_for_status()
        return CHAT_RESPONSE_DECODER.decode(reply.content)

    def close(self) -> None:
        self.client.close()
