"""Fixtures: the Chat API on a free loopback port, and a recording push receiver (a minimal relay)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from simulator.chat_api import ALIAS_ERROR_CODE
from simulator.scenario import open_chat
from simulator.server import ChatServer, ThreadedServer
from simulator.transcript import Chat, EventSpec, Mode

SERVICE = "customer-support"


def new_chat(client: httpx.Client, server: ChatServer, mode: Mode = "reliable") -> Chat:
    body = open_chat(client, server.base_url, service=SERVICE, mode=mode, device_id=f"dev-{mode}")
    chat = server.store.get(str(body["chatId"]))
    assert chat is not None
    return chat


def refresh(
    client: httpx.Client,
    server: ChatServer,
    chat: Chat,
    *,
    position: int = 1,
    overrides: dict[str, str] | None = None,
    **form: str,
) -> httpx.Response:
    params = {
        "userId": chat.user_id,
        "secureKey": chat.secure_key,
        "alias": chat.alias,
        "transcriptPosition": str(position),
        **form,
        **(overrides or {}),
    }
    return client.post(f"{server.base_url}/genesys/2/chat/{SERVICE}/{chat.chat_id}/refresh", data=params)


def agent_says(server: ChatServer, chat: Chat, *texts: str) -> list[dict[str, Any]]:
    return server.store.append(chat.chat_id, [EventSpec("Message", "agent", t) for t in texts])


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll until `condition()` holds; fail after `timeout_s` (generous: CI machines stall for seconds)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


class Receiver:
    """Records every push and how many were in flight at once; optionally refreshes like a relay."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.peers: set[tuple[str, int]] = set()
        self.active = 0
        self.max_active = 0
        self.delay_s = 0.0
        self.status = 200
        self.chat_api_url: str | None = None  # set to refresh on every trigger
        self.refresh_before_reply = False  # refresh inside the handler instead of after replying
        self.service = "customer-support"
        self.sessions: dict[str, dict[str, Any]] = {}
        self.aliases: dict[str, str] = {}  # the latest alias a Refresh response gave, per session
        self.refresh_replies: list[tuple[int, dict[str, Any]]] = []  # (HTTP status, body) of each refresh
        self.tokens: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.app = Starlette(
            routes=[
                Route("/push", self.push, methods=["POST"]),
                Route("/sessions/{session_id}", self.register, methods=["PUT"]),
            ]
        )

    def triggers(self, session_id: str | None = None) -> list[dict[str, str]]:
        """The userData of every trigger received, in arrival order."""
        found = [data for body in list(self.bodies) for data in self.triggers_in(body)]
        return [data for data in found if session_id is None or data["session-id"] == session_id]

    async def push(self, request: Request) -> Response:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            body = json.loads(await request.body())
            self.bodies.append(body)
            if request.client is not None:
                self.peers.add((request.client.host, request.client.port))
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            triggers = self.triggers_in(body)
            if self.chat_api_url and triggers and self.refresh_before_reply:
                await self._refresh(triggers[0])
            elif self.chat_api_url and triggers:
                task = asyncio.create_task(self._refresh(triggers[0]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return Response(status_code=self.status)
        finally:
            self.active -= 1

    @staticmethod
    def triggers_in(body: dict[str, Any]) -> list[dict[str, str]]:
        message = body["message"]
        if isinstance(message, dict) and message.get("messages", [{}])[0].get("type") == "PushUrl":
            return [message["messages"][0]["userData"]]
        return []

    async def register(self, request: Request) -> Response:
        self.tokens.append(request.headers.get("authorization", ""))
        self.sessions[request.path_params["session_id"]] = json.loads(await request.body())
        return Response(status_code=204)

    async def _refresh(self, data: dict[str, str]) -> None:
        """Refresh from the trigger's position. Alias: the trigger's `app-dbid`, then the latest a Refresh
        response gave, then the registered one; the next is tried after an alias error (a late trigger
        can carry an older alias than a response did)."""
        session_id = data["session-id"]
        creds = self.sessions.get(session_id, {})
        candidates = [data.get("app-dbid"), self.aliases.get(session_id), creds.get("alias")]
        aliases = list(dict.fromkeys(str(a) for a in candidates if a)) or [""]
        url = f"{self.chat_api_url}/genesys/2/chat/{self.service}/{session_id}/refresh"
        async with httpx.AsyncClient() as client:
            for alias in aliases:
                form = {
                    "userId": data.get("user-id") or creds.get("userId", ""),
                    "secureKey": data.get("secure-key") or creds.get("secureKey", ""),
                    "alias": alias,
                    "transcriptPosition": "1" if data["notify-position"] == "-1" else data["notify-position"],
                }
                response = await client.post(url, data=form)
                json_reply = response.headers.get("content-type") == "application/json"
                body: dict[str, Any] = response.json() if json_reply else {}
                self.refresh_replies.append((response.status_code, body))
                if body.get("statusCode") == 0 and body.get("alias"):
                    self.aliases[session_id] = str(body["alias"])
                if (body.get("errors") or [{}])[0].get("code") != ALIAS_ERROR_CODE:
                    return


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    with ChatServer() as server:
        yield server


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    """A push receiver on a free port and its push URL."""
    recv = Receiver()
    with ThreadedServer(recv.app) as server:
        yield recv, f"{server.base_url}/push"
