"""Chat API v2 Refresh for the workers (keep-alive; `timeout_s` bounds each whole call, which the
chat's lease relies on: see shared/form_client.py).

Refresh uses the REST credentials (userId, secureKey from the trigger's userData or the session
registry) and the newest alias; never the obfuscated `secureKey` member of a push message.
"""

from __future__ import annotations

import enum
import http.client
from dataclasses import dataclass
from urllib.parse import quote

import msgspec

from shared.form_client import FormClient
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
    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.http = FormClient(base_url, timeout_s)

    def refresh(self, service: str, session_id: str, creds: Credentials, position: int) -> RefreshResult:
        path = "/".join(quote(p, safe="") for p in (service, session_id, "refresh"))
        form = {**creds.form(), "transcriptPosition": str(position)}
        try:
            status, content = self.http.post_form(f"/genesys/2/chat/{path}", form)
        except TimeoutError:
            return RefreshResult(RefreshVerdict.RETRY, None, "timeout")
        except (OSError, http.client.HTTPException) as exc:
            return RefreshResult(RefreshVerdict.RETRY, None, type(exc).__name__)
        if status == 400:
            return RefreshResult(RefreshVerdict.FATAL, None, "http_400")
        if status != 200:
            return RefreshResult(RefreshVerdict.RETRY, None, f"http_{status}")
        try:
            response = CHAT_RESPONSE_DECODER.decode(content)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return RefreshResult(RefreshVerdict.RETRY, None, "bad_response")
        if response.statusCode == 2:
            return RefreshResult(RefreshVerdict.FATAL, response, "status_2")
        if response.statusCode != 0:
            return RefreshResult(RefreshVerdict.RETRY, response, f"status_{response.statusCode}")
        return RefreshResult(RefreshVerdict.OK, response, "ok")

    def close(self) -> None:
        self.http.close()
