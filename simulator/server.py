"""Run an ASGI app (the simulated Chat API) with uvicorn on loopback in a background thread."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from simulator.agent import Agent
from simulator.chat_api import ChatApi, Faults, RefreshLog
from simulator.transcript import ChatStore


class ThreadedServer:
    """`with ThreadedServer(app) as server:` serves `server.base_url` until the block ends. Port 0 picks
    a free port; `base_url` is valid once `start()` has returned."""

    def __init__(
        self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 10.0
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._startup_timeout_s = startup_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Start serving; returns the base URL once the socket accepts connections."""
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
        )
        server = uvicorn.Server(config)  # not in the main thread: uvicorn installs no signal handlers
        thread = threading.Thread(target=server.run, name=f"uvicorn-{self.port}", daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start on {self.host}:{self.port}")
            time.sleep(0.005)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        return self.base_url

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ChatServer(ThreadedServer):
    """The simulated GMS Chat API: `server.store` (chats), `server.faults`, `server.log` (refreshes).
    The store reads the per-batch part of `faults` (alias_switch, ahead_rate) as its noise.
    `server.agent` joins and answers the chats a chat app requests without scripting them
    (simulator/agent.py); `agent=None` leaves such chats without an agent."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        store: ChatStore | None = None,
        faults: Faults | None = None,
        agent: Agent | Literal["default"] | None = "default",
    ) -> None:
        self.store = store or ChatStore()
        self.faults = faults or Faults()
        self.store.noise = self.faults
        self.log = RefreshLog()
        self.agent = Agent(self.store) if agent == "default" else agent
        self.api = ChatApi(self.store, self.faults, self.log, self.agent)
        super().__init__(self.api.app, host=host, port=port)

    def start(self) -> str:
        if self.agent is not None:
            self.agent.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        if self.agent is not None:
            self.agent.stop()

    def __enter__(self) -> ChatServer:
        self.start()
        return self
