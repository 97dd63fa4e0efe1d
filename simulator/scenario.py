"""Scripted and random chat traffic: opens chats the way a chat app does, drives bursty agent activity at a
target rate through the simulated Chat Server, and reports what was pushed and refreshed.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import httpx

from simulator.agent import SCRIPTED_KEY
from simulator.chat_api import ALIAS_ERROR_CODE, Faults
from simulator.report import Report, build_report
from simulator.sender import PushSender
from simulator.server import ChatServer
from simulator.transcript import MODES, EventSpec, Mode

__all__ = ["ChatServer", "Faults", "Report", "ScenarioConfig", "open_chat", "run_scenario"]

ModeChoice = Literal["reliable", "payload", "wakeup", "mixed"]
_LINES = (
    "Hello, how can I help?",
    "Let me check that for you.",
    "One moment please.",
    "Done: anything else?",
)
_ALIAS_RETRIES = 5


def _error_code(response: httpx.Response) -> object:
    try:
        return response.json()["errors"][0]["code"]
    except (ValueError, LookupError, TypeError):
        return None


def agent_activity(rng: random.Random, roll: float) -> list[EventSpec]:
    """One burst of agent-side activity for a `roll` in [0.1, 1): bursty like real chats (a message is
    often followed within milliseconds by typing events and another message), plus the odd nickname
    change, custom notice and event type GMS does not have yet."""
    if roll < 0.6:
        specs = [EventSpec("Message", "agent", rng.choice(_LINES), {"messageType": "text"})]
        if rng.random() < 0.6:
            specs += [EventSpec("TypingStarted"), EventSpec("TypingStopped")]
            specs.append(EventSpec("Message", "agent", rng.choice(_LINES), {"messageType": "text"}))
        return specs
    if roll < 0.8:
        return [EventSpec("TypingStarted"), EventSpec("TypingStopped")]
    if roll < 0.87:
        return [EventSpec("NicknameUpdated", "agent", rng.choice(("Anna", "Anna B.", "Support")))]
    if roll < 0.94:
        return [EventSpec("CustomNotice", "system", "Transferred to billing", {"noticeCode": 7})]
    extra = {"x-future": {"level": 2, "tags": ["a", "b"]}, "userData": {"k": "v"}}
    return [EventSpec("FutureType", "system", "from a later GMS version", extra)]


@dataclass
class ScenarioConfig:
    chats: int = 10  # concurrent chats
    events_per_chat: int = 20  # agent-side events after the agent joins
    rate: float = 100.0  # events per second over all chats; <= 0 means as fast as possible
    mode: ModeChoice = "mixed"  # mixed: reliable, payload, wakeup in turn
    service: str = "customer-support"
    resend_delay_s: float = 15.0
    resend_attempts: int = 3
    duplicate_rate: float = 0.0
    string_message_rate: float = 0.5  # payload `message` sent as a string holding JSON
    flex_secure_key_rate: float = 0.0  # share of reliable chats whose triggers carry `secure-key`
    # Share of reliable chats whose triggers carry `app-dbid` (flex-push-content includes it). Chats with
    # secure-key always carry it too: a relay that takes its key from the trigger has no other alias.
    app_dbid_rate: float = 0.0
    late_rate: float = 0.0  # share of triggers held back `late_delay_ms` on the way (later ones overtake)
    late_delay_ms: int = 200
    unknown_member_rate: float = 0.25  # share of events carrying the unknown member "x-sim"
    customer_message_rate: float = 0.1  # share of bursts that are a customer Send through the Chat API
    api_url: str | None = None  # relay base URL for PUT /sessions/{id}; None: no registration
    api_token: str | None = None
    end_chats: bool = True  # disconnect every chat at the end of its events
    forever: bool = False  # open a new chat whenever one ends, until `stop` is set
    settle_timeout_s: float = 30.0  # how long to wait for replies and acknowledgements at the end
    http_timeout_s: float = 10.0
    seed: int | None = None
    # Refresh faults and Chat Server noise (alias_change, alias_switch, ahead_rate, require_alias); used
    # only when run_scenario starts its own ChatServer (otherwise that server's `faults` apply).
    faults: Faults = field(default_factory=Faults)


@dataclass
class _Live:
    chat_id: str
    user_id: str
    secure_key: str
    alias: str  # from Request Chat; calls use the chat's current alias (it changes)
    remaining: int


def open_chat(
    client: httpx.Client,
    chat_api_url: str,
    *,
    service: str,
    mode: Mode,
    device_id: str,
    nickname: str = "Kim",
    scripted: bool = True,
) -> dict[str, object]:
    """Request Chat as a chat app does (GMS push userData); returns the Chat API response. `scripted`:
    the caller drives the agent's side itself, so the simulated agent stays out of this chat."""
    form = {
        "nickname": nickname,
        "userData[GCTI_Chat_PushSubscribe]": "true",
        "userData[GCTI_GMS_PushDeviceType]": "customhttp",
        "userData[GCTI_GMS_PushDeviceId]": device_id,
        "userData[GCTI_GMS_PushResend]": str(mode == "reliable").lower(),
        "userData[GCTI_GMS_PushIncludePayload]": str(mode == "payload").lower(),
    }
    if scripted:
        form[f"userData[{SCRIPTED_KEY}]"] = "true"
    response = client.post(f"{chat_api_url}/genesys/2/chat/{service}", data=form)
    response.raise_for_status()
    body: dict[str, object] = response.json()
    return body


class _Driver:
    def __init__(self, server: ChatServer, config: ScenarioConfig, client: httpx.Client) -> None:
        self.server = server
        self.config = config
        self.client = client
        self.rng = random.Random(config.seed)
        self.registrations: dict[str, int] = {}
        self.opened = 0

    def open(self) -> _Live:
        config = self.config
        mode: Mode = MODES[self.opened % len(MODES)] if config.mode == "mixed" else config.mode
        self.opened += 1
        device_id = "dev-" + secrets.token_hex(12)
        body = open_chat(
            self.client, self.server.base_url, service=config.service, mode=mode, device_id=device_id
        )
        live = _Live(str(body["chatId"]), str(body["userId"]), str(body["secureKey"]), str(body["alias"]), 0)
        flex = mode == "reliable" and self.rng.random() < config.flex_secure_key_rate
        # Rolled only when asked for, so seeded runs without app-dbid draw the same numbers as before.
        app_dbid = flex or (
            mode == "reliable" and config.app_dbid_rate > 0 and self.rng.random() < config.app_dbid_rate
        )
        self.server.store.configure(live.chat_id, flex_secure_key=flex, flex_app_dbid=app_dbid)
        if mode == "reliable" and not flex and config.api_url and config.api_token:
            self.registrations[live.chat_id] = self._register(live, device_id)
        # The agent joining is the chat's first push.
        self.server.store.append(live.chat_id, [self._spec(EventSpec("ParticipantJoined", "agent"))])
        live.remaining = config.events_per_chat
        return live

    def _register(self, live: _Live, device_id: str) -> int:
        """PUT {relay}/sessions/{id}: the credentials a trigger without `secure-key` cannot carry."""
        url = f"{(self.config.api_url or '').rstrip('/')}/sessions/{live.chat_id}"
        body = {
            "deviceId": device_id,
            "userId": live.user_id,
            "secureKey": live.secure_key,
            "alias": live.alias,
            "service": self.config.service,
        }
        # Like a chat app, retry while the relay is unreachable or answers 5xx (bounded).
        status, delay, deadline = 0, 0.05, time.monotonic() + self.config.settle_timeout_s
        while True:
            try:
                response = self.client.put(
                    url, json=body, headers={"Authorization": f"Bearer {self.config.api_token}"}
                )
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            if (status != 0 and status < 500) or time.monotonic() > deadline:
                return status
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _spec(self, spec: EventSpec) -> EventSpec:
        if self.rng.random() < self.config.unknown_member_rate:
            return spec._replace(extra={**(spec.extra or {}), "x-sim": 1})
        return spec

    def burst(self, live: _Live) -> int:
        """One bit of activity; returns how many events it added."""
        rng = self.rng
        roll = rng.random()
        if roll < self.config.customer_message_rate:
            self._call(live, "send", {"message": "Thanks!"})
            specs: list[EventSpec] = []
            count = 1
        else:
            specs = agent_activity(rng, roll)
        specs = specs[: max(live.remaining, 1)]
        if specs:
            self.server.store.append(live.chat_id, [self._spec(s) for s in specs])
            count = len(specs)
        live.remaining -= count
        return count

    def close(self, live: _Live) -> None:
        self._call(live, "disconnect", {})

    def _call(self, live: _Live, action: str, form: dict[str, str]) -> None:
        """Send or Disconnect as the chat app, with the chat's current alias: it changes on Refresh
        responses and outside them, and GMS rejects a stale one. A Refresh can change it between our
        read and our call, so an alias error is retried with the alias read again (bounded)."""
        url = f"{self.server.base_url}/genesys/2/chat/{self.config.service}/{live.chat_id}/{action}"
        for _ in range(_ALIAS_RETRIES):
            chat = self.server.store.get(live.chat_id, with_events=False)
            alias = chat.alias if chat is not None else live.alias
            creds = {"userId": live.user_id, "secureKey": live.secure_key, "alias": alias}
            response = self.client.post(url, data={**creds, **form})
            if response.status_code != 400 or _error_code(response) != ALIAS_ERROR_CODE:
                break
        response.raise_for_status()


def run_scenario(
    push_url: str,
    config: ScenarioConfig | None = None,
    *,
    server: ChatServer | None = None,
    stop: threading.Event | None = None,
) -> Report:
    """Run chats against the relay at `push_url` and report. Starts its own ChatServer unless given one
    (pass one when the relay must know GMS_URL = `server.base_url` before the run)."""
    config = config or ScenarioConfig()
    own_server = server is None
    server = server or ChatServer(faults=config.faults)
    if own_server:
        server.start()
    stop = stop or threading.Event()
    sender = PushSender(
        push_url,
        server.store,
        resend_delay_s=config.resend_delay_s,
        resend_attempts=config.resend_attempts,
        duplicate_rate=config.duplicate_rate,
        string_message_rate=config.string_message_rate,
        late_rate=config.late_rate,
        late_delay_ms=config.late_delay_ms,
        timeout_s=config.http_timeout_s,
        rng=random.Random(None if config.seed is None else config.seed + 1),
    )
    started = time.monotonic()
    try:
        with sender, httpx.Client(timeout=config.http_timeout_s) as client:
            driver = _Driver(server, config, client)
            _drive(driver, config, stop)
            settled = sender.wait_idle(config.settle_timeout_s)
        return build_report(
            server.store,
            sender,
            server.log,
            registrations=driver.registrations,
            push_url=push_url,
            chat_api_url=server.base_url,
            duration_s=time.monotonic() - started,
            settled=settled,
        )
    finally:
        if own_server:
            server.stop()


def _drive(driver: _Driver, config: ScenarioConfig, stop: threading.Event) -> None:
    live = [driver.open() for _ in range(config.chats)]
    next_at = time.monotonic()
    while live and not stop.is_set():
        chat = driver.rng.choice(live)
        if chat.remaining <= 0:
            live.remove(chat)
            if config.end_chats:
                driver.close(chat)
            if config.forever:
                live.append(driver.open())
            continue
        added = driver.burst(chat)
        if config.rate > 0:  # pacing toward the target rate, not synchronisation
            next_at += added / config.rate
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
