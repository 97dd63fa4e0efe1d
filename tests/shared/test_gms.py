"""Chat API Refresh (shared/gms.py): the request on the wire, and replies mapped to OK, RETRY or FATAL."""

from __future__ import annotations

import contextlib
import json

import httpx
import pytest

from shared.gms import ChatApi, Credentials, RefreshVerdict
from simulator.scenario import open_chat
from simulator.server import ChatServer
from simulator.transcript import EventSpec
from tests.shared.raw_http import CREDS, SERVICE, ServerFactory, reply


def test_refresh_reads_the_transcript_from_the_simulator(chat_server: ChatServer) -> None:
    with httpx.Client(timeout=5) as client:
        body = open_chat(client, chat_server.base_url, service=SERVICE, mode="reliable", device_id="d1")
    chat = chat_server.store.get(str(body["chatId"]))
    assert chat is not None
    chat_server.store.append(chat.chat_id, [EventSpec("Message", "agent", "hello")])
    creds = Credentials(user_id=chat.user_id, secure_key=chat.secure_key, alias=chat.alias)
    with contextlib.closing(ChatApi(chat_server.base_url, timeout_s=5)) as api:
        first = api.refresh(SERVICE, chat.chat_id, creds, 1)
        again = api.refresh(SERVICE, chat.chat_id, creds, 1)
        wrong_key = api.refresh(SERVICE, chat.chat_id, Credentials(chat.user_id, "nope", chat.alias), 1)
    assert first.verdict is RefreshVerdict.OK and first.response is not None
    texts = [json.loads(bytes(m)).get("text") for m in first.response.messages]
    assert "hello" in texts
    assert again.response is not None
    assert [bytes(m) for m in again.response.messages] == [bytes(m) for m in first.response.messages]
    assert wrong_key.verdict is RefreshVerdict.FATAL


def test_keep_alive_reuses_one_connection(raw_server: ServerFactory) -> None:
    server = raw_server(lambda n: reply())
    with contextlib.closing(ChatApi(server.url, timeout_s=5)) as api:
        results = [api.refresh(SERVICE, "s/1", CREDS, n) for n in range(5)]
    assert {r.verdict for r in results} == {RefreshVerdict.OK}
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /genesys/2/chat/customer-support/s%2F1/refresh HTTP/1.1\r\n")
    assert first.endswith(b"userId=u1&secureKey=k1&alias=117&transcriptPosition=0")


def test_silence_is_a_timeout_to_retry(raw_server: ServerFactory) -> None:
    server = raw_server(lambda n: b"")
    with contextlib.closing(ChatApi(server.url, timeout_s=0.2)) as api:
        result = api.refresh(SERVICE, "s1", CREDS, 1)
    assert (result.verdict, result.reason) == (RefreshVerdict.RETRY, "timeout")


@pytest.mark.parametrize(
    ("answer", "verdict", "reason"),
    [
        (reply(500, b"oops"), RefreshVerdict.RETRY, "http_500"),
        (reply(400, b"{}"), RefreshVerdict.FATAL, "http_400"),
        (reply(200, b"<html>"), RefreshVerdict.RETRY, "bad_response"),
        (reply(200, b'{"statusCode":1,"errors":[]}'), RefreshVerdict.RETRY, "status_1"),
        (b"HTTP/1.1 banana\r\n\r\n", RefreshVerdict.RETRY, "BadStatusLine"),
    ],
)
def test_bad_replies_map_to_retry_or_fatal(
    raw_server: ServerFactory, answer: bytes, verdict: RefreshVerdict, reason: str
) -> None:
    server = raw_server(lambda n: answer)
    with contextlib.closing(ChatApi(server.url, timeout_s=5)) as api:
        result = api.refresh(SERVICE, "s1", CREDS, 1)
    assert (result.verdict, result.reason) == (verdict, reason)
