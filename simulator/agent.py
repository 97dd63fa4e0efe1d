"""The simulated contact-centre agent: joins the chats a chat app requests and answers the customer.

The scenario driver scripts its own agents; a chat requested by anyone else (the relay's `POST /chats`,
a person on the demo page) would otherwise sit in silence. Like a person at an agent desktop, the
agent joins a moment after the request, greets, and answers each customer message: typing first, then
a reply that quotes what the customer wrote. Everything goes through the ChatStore, so it is pushed
and refreshed like any other event.

Store listeners run under the store's lock and may only enqueue, so the agent keeps its own timeline
(a heap of due actions) served by one thread.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any

from simulator.transcript import Chat, ChatStore, EventSpec

# The userData key (value "true") by which a chat app says "I drive this chat's agent myself": the
# scenario driver sets it on every chat it opens. Real GMS passes unknown userData through untouched.
SCRIPTED_KEY = "x-sim-scripted"
_MAX_QUOTE_CHARS = 200
_TEXT: dict[str, str] = {"messageType": "text"}


def reply_to(text: str) -> str:
    """The agent's answer to one customer message: it always quotes the message (so a person, and a
    test, can see which message was answered), with a line that fits it."""
    quoted = " ".join(text.split())
    if len(quoted) > _MAX_QUOTE_CHARS:
        quoted = quoted[: _MAX_QUOTE_CHARS - 1] + "\u2026"
    lowered = quoted.lower()
    if any(word in lowered.split() for word in ("hi", "hello", "hey")):
        line = "Hello! What can I do for you today?"
    elif lowered.endswith("?"):
        line = "Good question: let me look that up for you."
    elif any(word in lowered for word in ("thanks", "thank you", "bye")):
        line = "You're welcome. Anything else?"
    else:
        line = "Noted. Anything else I can help with?"
    return f'You wrote: "{quoted}". {line}'


class Agent:
    """Answers the chats it was asked to `join`. `start()` subscribes to the store and starts its
    thread; `stop()` ends both, dropping what is still scheduled."""

    def __init__(
        self,
        store: ChatStore,
        *,
        join_delay_s: float = 0.3,
        typing_delay_s: float = 0.3,
        reply_delay_s: float = 0.8,
    ) -> None:
        self.store = store
        self.join_delay_s = join_delay_s
        self.typing_delay_s = typing_delay_s  # from the customer's message to the agent typing
        self.reply_delay_s = reply_delay_s  # from the agent typing to its reply
        self._served: set[str] = set()
        self._due: list[tuple[float, int, str, list[EventSpec]]] = []  # (monotonic due, seq, chat, specs)
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.store.subscribe(self._on_events)
        with self._wake:
            self._stop = False
        self._thread = threading.Thread(target=self._run, name="sim-agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.store.unsubscribe(self._on_events)
        with self._wake:
            self._stop = True
            self._due.clear()
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def join(self, chat: Chat) -> None:
        """Serve this chat from now on: join it and greet the customer shortly."""
        nickname = chat.nicknames.get("customer", "there")
        greeting = f"Hi {nickname}, I'm {chat.nicknames.get('agent', 'Anna')}. How can I help?"
        with self._wake:
            self._served.add(chat.chat_id)
        self._schedule(
            chat.chat_id,
            self.join_delay_s,
            [EventSpec("ParticipantJoined", "agent"), EventSpec("Message", "agent", greeting, _TEXT)],
        )

    def _on_events(self, chat: Chat, events: list[dict[str, Any]]) -> None:
        """Store listener (under the store lock): schedule an answer to each customer message."""
        if chat.chat_id not in self._served or chat.ended:
            return
        for event in events:
            sender = event.get("from") or {}
            if event.get("type") == "Message" and sender.get("type") == "Client":
                answer = reply_to(str(event.get("text") or ""))
                self._schedule(chat.chat_id, self.typing_delay_s, [EventSpec("TypingStarted", "agent")])
                reply = [EventSpec("TypingStopped", "agent"), EventSpec("Message", "agent", answer, _TEXT)]
                self._schedule(chat.chat_id, self.typing_delay_s + self.reply_delay_s, reply)

    def _schedule(self, chat_id: str, delay_s: float, specs: list[EventSpec]) -> None:
        with self._wake:
            heapq.heappush(self._due, (time.monotonic() + delay_s, next(self._seq), chat_id, specs))
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stop and (not self._due or self._due[0][0] > time.monotonic()):
                    timeout = self._due[0][0] - time.monotonic() if self._due else None
                    self._wake.wait(timeout)
                if self._stop:
                    return
                _due, _seq, chat_id, specs = heapq.heappop(self._due)
            chat = self.store.get(chat_id, with_events=False)
            if chat is not None and not chat.ended:  # the customer may have left meanwhile
                self.store.append(chat_id, specs)
