"""The bodies for benchmarks/ingress.py: one realistic mix, generated once, sent identically to every
target, and the HTTP requests carrying them."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tests.pushes import body, event, payload_message, trigger_message


@dataclass
class Mix:
    triggers: int = 0
    resends: int = 0
    payloads: int = 0
    events: int = 0
    wakeups: int = 0


def generate_bodies(count: int, seed: int, prefix: str, mix: Mix | None = None) -> list[bytes]:
    """`count` distinct push bodies: ~80% reliable triggers, ~15% payload pushes, ~5% wake-ups.

    Triggers walk forward through a pool of live chats (position +1..3, a few resends with attempt + 1,
    a fifth with `message` as a string holding JSON, chats ending and new ones starting), so no two
    bodies are exact duplicates the ingress would drop early.
    """
    rng = random.Random(seed)
    mix = mix if mix is not None else Mix()
    chats = [[0, 0] for _ in range(64)]  # [position, attempt] per reliable chat
    chat_ids = list(range(64))
    payload_next = [0] * 32  # next transcript index per payload-mode chat
    next_chat = 64
    bodies: list[bytes] = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.80:
            slot = rng.randrange(len(chats))
            state = chats[slot]
            if state[0] > 0 and rng.random() < 0.05:
                state[1] += 1  # Chat Server resends the same trigger
                mix.resends += 1
            else:
                state[0] += rng.randint(1, 3)
                state[1] = 0
            chat = chat_ids[slot]
            message = trigger_message(state[0], state[1], session_id=f"{prefix}s{chat}", user_id=f"u{chat}")
            encoding = "string" if rng.random() < 0.2 else "object"
            bodies.append(body(message, device_id=f"{prefix}d{chat}", encoding=encoding))
            mix.triggers += 1
            if rng.random() < 0.02:  # the chat ends; a new one takes its slot
                chats[slot], chat_ids[slot], next_chat = [0, 0], next_chat, next_chat + 1
        elif roll < 0.95:
            slot = rng.randrange(len(payload_next))
            n = rng.randint(1, 3)
            first = payload_next[slot]
            payload_next[slot] += n
            events = [event(first + k, text=f"message {first + k} of chat {slot}") for k in range(n)]
            message = payload_message(events, chat_id=f"{prefix}p{slot}")
            bodies.append(body(message, device_id=f"{prefix}pd{slot}"))
            mix.payloads += 1
            mix.events += n
        else:
            bodies.append(body("dummy message", device_id=f"{prefix}w{i}"))
            mix.wakeups += 1
    return bodies


def http_request(payload: bytes) -> bytes:
    head = (
        "POST /push HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: gms-bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload
