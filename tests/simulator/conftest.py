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

from simulator.server import ChatServer, ThreadedServer


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
        session_id = data["session-id"]
        creds = self.sessions.get(session_id, {})
        form = {
            "userId": data.get("user-id") or creds.get("userId", ""),
            "secureKey": data.get("secure-key") or creds.get("secureKey", ""),
            "alias": str(creds.get("alias", "")),
            "transcriptPosition": "1" if data["notify-position"] == "-1" else data["notify-position"],
        }
        url = f"{self.chat_api_url}/genesys/2/chat/{self.service}/{session_id}/refresh"
        async with httpx.AsyncClient() as client:
            await client.post(url, data=form)


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
