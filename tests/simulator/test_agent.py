"""The simulated agent over real loopback HTTP: it joins the chats a chat app requests and answers the
customer; Request Chat honours the push userData keys (subscription, device type, NotifyRequestor)."""

from __future__ import annotations

from typing import Any

import httpx

from simulator.agent import reply_to
from simulator.scenario import open_chat
from simulator.sender import PushSender
from simulator.server import ChatServer
from simulator.transcript import Chat
from tests.simulator.conftest import SERVICE, Receiver, wait_for


def request_chat(client: httpx.Client, server: ChatServer, **user_data: str) -> Chat:
    """Request Chat as the relay's POST /chats does: push keys, no scripting marker."""
    form = {"nickname": "Kim", "subject": "billing"}
    form.update({f"userData[{k}]": v for k, v in user_data.items()})
    body = client.post(f"{server.base_url}/genesys/2/chat/{SERVICE}", data=form).json()
    assert body["statusCode"] == 0
    chat = server.store.get(str(body["chatId"]))
    assert chat is not None
    return chat


PUSH_KEYS = {
    "GCTI_Chat_PushSubscribe": "true",
    "GCTI_GMS_PushDeviceType": "customhttp",
    "GCTI_GMS_PushDeviceId": "dev-agent",
    "GCTI_GMS_PushResend": "true",
}


def call(client: httpx.Client, server: ChatServer, chat: Chat, action: str, **form: str) -> dict[str, Any]:
    current = server.store.get(chat.chat_id, with_events=False)
    assert current is not None
    creds = {"userId": chat.user_id, "secureKey": chat.secure_key, "alias": current.alias}
    url = f"{server.base_url}/genesys/2/chat/{SERVICE}/{chat.chat_id}/{action}"
    body: dict[str, Any] = client.post(url, data={**creds, **form}).json()
    return body


def events(server: ChatServer, chat: Chat) -> list[tuple[str, str, str | None]]:
    current = server.store.get(chat.chat_id)
    assert current is not None
    return [(e["type"], e["from"]["type"], e.get("text")) for e in current.events]


def test_agent_joins_greets_and_answers_what_the_customer_writes(
    client: httpx.Client, chat_server: ChatServer
) -> None:
    chat = request_chat(client, chat_server, **PUSH_KEYS)
    assert chat.user_data == PUSH_KEYS  # what GMS received, for the relay's tests
    wait_for(lambda: len(events(chat_server, chat)) == 3, what="the agent's join and greeting")
    assert events(chat_server, chat) == [
        ("ParticipantJoined", "Client", None),
        ("ParticipantJoined", "Agent", None),
        ("Message", "Agent", "Hi Kim, I'm Anna. How can I help?"),
    ]
    assert call(client, chat_server, chat, "send", message="Where is my parcel?")["statusCode"] == 0
    wait_for(lambda: len(events(chat_server, chat)) == 7, what="the agent's answer")
    assert events(chat_server, chat)[3:] == [
        ("Message", "Client", "Where is my parcel?"),
        ("TypingStarted", "Agent", None),
        ("TypingStopped", "Agent", None),
        ("Message", "Agent", reply_to("Where is my parcel?")),
    ]
    assert '"Where is my parcel?"' in reply_to("Where is my parcel?")


def test_customer_typing_and_leaving(client: httpx.Client, chat_server: ChatServer) -> None:
    chat = request_chat(client, chat_server, **PUSH_KEYS)
    wait_for(lambda: len(events(chat_server, chat)) == 3, what="the agent's greeting")
    assert call(client, chat_server, chat, "startTyping")["statusCode"] == 0
    assert call(client, chat_server, chat, "stopTyping")["statusCode"] == 0
    assert call(client, chat_server, chat, "disconnect")["chatEnded"] is True
    assert events(chat_server, chat)[3:] == [
        ("TypingStarted", "Client", None),
        ("TypingStopped", "Client", None),
        ("ParticipantLeft", "Client", None),
    ]
    assert call(client, chat_server, chat, "send", message="late")["statusCode"] == 0
    # The customer left: nobody answers any more (the agent only acts on chats still open).
    assert [e for e in events(chat_server, chat) if e[1] == "Agent"] == [
        ("ParticipantJoined", "Agent", None),
        ("Message", "Agent", "Hi Kim, I'm Anna. How can I help?"),
    ]


def test_scripted_chats_get_no_agent(client: httpx.Client, chat_server: ChatServer) -> None:
    body = open_chat(client, chat_server.base_url, service=SERVICE, mode="reliable", device_id="dev-s")
    chat = chat_server.store.get(str(body["chatId"]))
    assert chat is not None
    assert call(client, chat_server, chat, "send", message="hello")["statusCode"] == 0
    # A later chat with an agent is answered; by then the scripted one would have been too.
    other = request_chat(client, chat_server, **PUSH_KEYS)
    assert call(client, chat_server, other, "send", message="hello")["statusCode"] == 0
    wait_for(lambda: len(events(chat_server, other)) == 7, what="the other chat's answer")
    assert [e[0] for e in events(chat_server, chat)] == ["ParticipantJoined", "Message"]


def test_pushes_follow_the_request_chat_user_data(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    with PushSender(push_url, chat_server.store, resend_delay_s=60) as sender:
        quiet = request_chat(client, chat_server, **{**PUSH_KEYS, "GCTI_GMS_NotifyRequestor": "false"})
        unsubscribed = request_chat(client, chat_server, **{**PUSH_KEYS, "GCTI_Chat_PushSubscribe": "false"})
        other_type = request_chat(client, chat_server, **{**PUSH_KEYS, "GCTI_GMS_PushDeviceType": "ios"})
        for chat in (quiet, unsubscribed, other_type):
            wait_for(lambda: len(events(chat_server, chat)) == 3, what="the greeting")  # noqa: B023
            call(client, chat_server, chat, "send", message="hi")
        wait_for(lambda: len(events(chat_server, quiet)) == 7, what="the answer")
        wait_for(lambda: len(recv.triggers()) == 5, what="five triggers")
        # The sender records a push once its reply is back, just after the receiver has it.
        wait_for(lambda: len(sender.records()) == 5, what="five pushes recorded")
        # The agent's join, greeting, typing (2) and answer; not the customer's own message (index 4).
        assert [r.indexes for r in sender.records()] == [[2], [3], [5], [6], [7]]
    assert {b["deviceId"] for b in recv.bodies} == {"dev-agent"}  # only `quiet` subscribed
    assert {t["session-id"] for t in recv.triggers()} == {quiet.chat_id}
