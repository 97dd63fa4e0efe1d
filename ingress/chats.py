"""`POST /chats` and the chat actions: a customer's chat started and driven through the relay.

`POST /chats` is GMS Request Chat with the push userData built in, so an app needs to know nothing of
customhttp push: the relay picks an unguessable device id, asks GMS to push the chat to itself, and
registers the reply's REST credentials at once (the same Redis effect as `PUT /sessions`, so the
default `flex-push-content`, which puts no secure key in triggers, needs no extra call). The secure key
never leaves the relay: the customer gets a device token instead, which opens its event stream
(`eventsUrl`) and authorises Send, typing and Disconnect on that chat only, forwarded to GMS with the
stored credentials and the chat's current alias.

Without DEVICE_TOKEN_SECRET these endpoints answer 404 (there would be no way to act on the chat).
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Literal, TypeVar

import msgspec
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingress.auth import FailureThrottle, bearer_ok
from ingress.bodies import bounded_body
from ingress.gms_chat import GmsChat, Reply, Verdict
from ingress.rate_limit import TokenBuckets
from ingress.replies import error_body
from ingress.store import IngressStore
from shared import device_tokens, keys
from shared.classify import MAX_ID_CHARS
from shared.errors import (
    ChatEnded,
    Forbidden,
    GmsRefused,
    GmsUnavailable,
    InvalidJson,
    InvalidPush,
    RedisUnavailable,
    TooManyFailures,
    Unauthorized,
)
from shared.gms import Credentials
from shared.models import SessionRegistration

CHAT_BODY_MAX_BYTES = 16384
TEXT_MAX_CHARS = 4096
NICKNAME_MAX_CHARS = 64
SUBJECT_MAX_CHARS = 256
USER_DATA_MAX_ENTRIES = 32
USER_DATA_VALUE_MAX_CHARS = 1024
# Service names and userData keys go into a URL path and `userData[key]` form names: plain characters.
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# The relay owns push: a client may not subscribe someone else's device, nor change how GMS pushes.
_RESERVED = ("GCTI_Chat_Push", "GCTI_GMS_Push", "GCTI_GMS_NotifyRequestor", "GCTI_GMS_NodeGroup")
# The chat actions and the Chat API v2 operation each one is forwarded as.
ACTIONS = {"messages": "send", "typing": "startTyping", "disconnect": "disconnect"}
_ALIAS_TRIES = 3


class ChatStart(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /chats`."""

    nickname: str
    subject: str | None = None
    userData: dict[str, str] | None = None
    service: str | None = None
    mode: Literal["reliable", "payload"] = "reliable"


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /chats/{chatId}/messages`."""

    text: str


T = TypeVar("T")
_START = msgspec.json.Decoder(ChatStart)
_MESSAGE = msgspec.json.Decoder(ChatMessage)


def _decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidPush(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidJson("body is not valid JSON") from None


def _check_text(value: str, name: str, max_chars: int, *, lines: bool = False) -> None:
    """Non-blank, bounded, and printable (a message may hold line breaks)."""
    printable = value.replace("\n", "").replace("\t", "") if lines else value
    if not value.strip() or len(value) > max_chars or not printable.isprintable():
        raise InvalidPush(f"{name}: expected 1 to {max_chars} printable characters")


def _check_start(start: ChatStart) -> None:
    _check_text(start.nickname, "nickname", NICKNAME_MAX_CHARS)
    if start.subject is not None:
        _check_text(start.subject, "subject", SUBJECT_MAX_CHARS)
    if start.service is not None and not _NAME.fullmatch(start.service):
        raise InvalidPush("service: expected 1 to 64 of A-Z a-z 0-9 _ . -")
    user_data = start.userData or {}
    if len(user_data) > USER_DATA_MAX_ENTRIES:
        raise InvalidPush(f"userData: at most {USER_DATA_MAX_ENTRIES} entries")
    for key, value in user_data.items():
        if not _NAME.fullmatch(key):
            raise InvalidPush(f"userData key {key[:64]!r}: expected 1 to 64 of A-Z a-z 0-9 _ . -")
        if key.startswith(_RESERVED):
            raise InvalidPush(f"userData key {key!r} is set by the relay (push keys)")
        if len(value) > USER_DATA_VALUE_MAX_CHARS:
            raise InvalidPush(f"userData[{key}]: at most {USER_DATA_VALUE_MAX_CHARS} characters")


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


class ChatRoutes:
    """The routes of `POST /chats` and `POST /chats/{chatId}/{messages|typing|disconnect}`."""

    def __init__(self, store: IngressStore, throttle: FailureThrottle) -> None:
        self.store = store
        self.settings = store.settings
        self.throttle = throttle  # the app's: a guess at any token counts against the same address
        self.buckets = TokenBuckets(self.settings.chat_start_burst, self.settings.chat_start_rate_per_min)
        self._gms: GmsChat | None = None  # built in the event loop, on first use

    def routes(self) -> list[Route]:
        return [
            Route("/chats", self.start, methods=["POST"]),
            Route("/chats/{chat_id}/{action}", self.act, methods=["POST"]),
        ]

    async def aclose(self) -> None:
        if self._gms is not None:
            await self._gms.aclose()
            self._gms = None

    def _secret(self) -> tuple[str, ...]:  # DEVICE_TOKEN_SECRET's list: the first signs, each verifies
        secret = self.settings.device_token_secret
        if secret is None:
            raise HTTPException(404, "chats are disabled (DEVICE_TOKEN_SECRET unset)")
        if self.settings.gms_url is None:
            raise HTTPException(404, "chats are disabled (GMS_URL unset)")
        return secret

    def _chat_api(self) -> GmsChat:
        if self._gms is None:
            assert self.settings.gms_url is not None  # checked by _secret
            self._gms = GmsChat(self.settings.gms_url, self.settings.chat_api_timeout_ms / 1000)
        return self._gms

    async def start(self, request: Request) -> Response:
        secret = self._secret()
        address = _address(request)
        token = self.settings.chat_start_token
        if token is not None:
            if self.throttle.blocked(address):
                raise TooManyFailures("too many failed authentications")
            if not bearer_ok(token, request.headers.get("authorization")):
                self.throttle.failed(address)
                raise Unauthorized("missing or wrong chat start token")
        start = _decode(_START, await bounded_body(request, CHAT_BODY_MAX_BYTES))
        _check_start(start)
        # The bucket guards GMS (each chat is a session there and work for an agent), so a request
        # refused above costs no token.
        wait_s = self.buckets.take(address) if token is None else 0.0
        if wait_s > 0:
            detail = "too many chats started from this address; retry later"
            retry = {"Retry-After": str(max(1, round(wait_s)))}
            return Response(error_body("rate_limited", detail), 429, retry, "application/json")
        service = start.service or self.settings.gms_chat_service
        device_id = "dev-" + secrets.token_urlsafe(24)  # 192 random bits: unguessable
        form = {"nickname": start.nickname}
        if start.subject is not None:
            form["subject"] = start.subject
        for key, value in {**(start.userData or {}), **self._push_keys(device_id, start.mode)}.items():
            form[f"userData[{key}]"] = value
        reply = await self._chat_api().request_chat(service, form)
        response = reply.response
        if reply.verdict is Verdict.UNAVAILABLE:
            raise GmsUnavailable("GMS did not answer the chat request; try again")
        if reply.verdict is Verdict.REFUSED or response is None:
            raise GmsRefused("GMS refused the chat request")
        fields = (response.chatId, response.userId, response.secureKey)
        if not all(isinstance(f, str | int) and 0 < len(str(f)) <= MAX_ID_CHARS for f in fields):
            raise GmsRefused("GMS answered the chat request without a usable session")
        chat_id, user_id, secure_key = (str(f) for f in fields)
        alias = None if response.alias is None else str(response.alias)
        registration = SessionRegistration(device_id, user_id, secure_key, alias, service)
        try:
            outcome = await self.store.register(chat_id, registration)
        except RedisUnavailable:
            # Nobody could follow or act on this chat: end it rather than leave an agent talking to no one.
            creds = Credentials(user_id, secure_key, alias or "")
            await self._chat_api().act(service, chat_id, "disconnect", creds, {})
            raise
        if outcome == "ended":
            raise GmsRefused("GMS answered the chat request with a session that has ended")
        device_token, _expires_at = device_tokens.issue(
            device_tokens.signing_keys(secret), device_id, self.settings.device_token_ttl_s, time.time()
        )
        body = {
            "chatId": chat_id,
            "deviceId": device_id,
            "token": device_token,
            "eventsUrl": f"/devices/{device_id}/events",
        }
        return JSONResponse(body, 201, headers={"Cache-Control": "no-store"})

    def _push_keys(self, device_id: str, mode: Literal["reliable", "payload"]) -> dict[str, str]:
        """The userData that makes GMS push this chat to the relay (gms-protocol.md section 5)."""
        push = {
            "GCTI_Chat_PushSubscribe": "true",
            "GCTI_GMS_PushDeviceType": "customhttp",
            "GCTI_GMS_PushDeviceId": device_id,
            # The device stream is the customer's whole transcript, its own messages included (the
            # contract's demo page shows them): ask for them explicitly rather than rely on a default.
            "GCTI_GMS_NotifyRequestor": "true",
        }
        if mode == "reliable":
            push["GCTI_GMS_PushResend"] = "true"
        else:
            push["GCTI_GMS_PushIncludePayload"] = "true"
        if self.settings.gms_node_group is not None:
            push["GCTI_GMS_NodeGroup"] = self.settings.gms_node_group
        return push

    async def act(self, request: Request) -> Response:
        secret = self._secret()
        operation = ACTIONS.get(request.path_params["action"])
        if operation is None:
            raise HTTPException(404, "no such chat action")
        address = _address(request)
        if self.throttle.blocked(address):
            raise TooManyFailures("too many failed authentications")
        token = _bearer(request)
        device_id = device_tokens.verify(device_tokens.signing_keys(secret), token or "", time.time())
        if device_id is None:
            self.throttle.failed(address)
            raise Unauthorized("missing, invalid or expired device token")
        chat_id = request.path_params["chat_id"]
        form: dict[str, str] = {}
        if operation == "send":
            message = _decode(_MESSAGE, await bounded_body(request, CHAT_BODY_MAX_BYTES))
            _check_text(message.text, "text", TEXT_MAX_CHARS, lines=True)
            form = {"message": message.text, "messageType": "text"}
        service, aliases, creds = await self._chat_state(chat_id, device_id)
        reply = await self._forward(service, chat_id, operation, creds, aliases, form)
        if reply.verdict is Verdict.UNAVAILABLE:
            raise GmsUnavailable("GMS did not answer; try again")
        if reply.verdict is Verdict.REFUSED and operation != "disconnect":
            raise ChatEnded("GMS no longer accepts this for the chat: it has ended")
        return Response(status_code=204)  # a refused Disconnect: the chat was over already

    async def _chat_state(self, chat_id: str, device_id: str) -> tuple[str, list[str], tuple[str, str]]:
        """(service, alias candidates newest first, (userId, secureKey)) of a chat of this device."""
        if not chat_id or len(chat_id) > MAX_ID_CHARS or not chat_id.isprintable():
            raise Forbidden("this device token is not for this chat")
        pipe = self.store.client.pipeline(transaction=False)
        pipe.hmget(keys.session(chat_id), ["deviceId", "service", "alias", "aliases"])
        pipe.hmget(keys.credentials(chat_id), ["userId", "secureKey"])
        pipe.exists(keys.ended(chat_id))
        try:
            session, creds, ended = await pipe.execute()
        except (RedisError, OSError, TimeoutError):
            raise RedisUnavailable("Redis is unreachable") from None
        owner, service, alias, aliases = (v.decode() if v is not None else None for v in session)
        if owner is None and ended:  # a chat's end removes its state, owner included
            raise ChatEnded("the chat has ended")
        # An unknown chat and another device's chat look the same: no probing for chat ids.
        if owner is None or not secrets.compare_digest(owner.encode(), device_id.encode()):
            raise Forbidden("this device token is not for this chat")
        if ended or creds[0] is None or creds[1] is None:
            raise ChatEnded("the chat has ended")
        candidates = [a for a in [alias, *(aliases or "").split("\n")] if a]
        return (
            service or self.settings.gms_chat_service,
            list(dict.fromkeys(candidates)),
            (creds[0].decode(), creds[1].decode()),
        )

    async def _forward(
        self,
        service: str,
        chat_id: str,
        operation: str,
        creds: tuple[str, str],
        aliases: list[str],
        form: dict[str, str],
    ) -> Reply:
        """Call GMS with the current alias; a refusal may mean the alias moved on (a multi-Chat-Server
        GMS refuses a stale alias the way it refuses an ended chat), so the next-newest known alias is
        tried, a few at most."""
        reply = Reply(Verdict.REFUSED, None, "no alias")
        for alias in aliases[:_ALIAS_TRIES] or [""]:
            reply = await self._chat_api().act(service, chat_id, operation, Credentials(*creds, alias), form)
            if reply.verdict is not Verdict.REFUSED:
                break
        return reply
