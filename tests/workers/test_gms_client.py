"""The Refresh client over real loopback sockets: the simulator's Chat API, and raw servers that
misbehave the ways a real network does (stale keep-alive, silence, dripped replies, huge replies,
cookies)."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from shared import form_client
from shared.form_client import FormClient, ReplyTooLarge
from shared.gms import ChatApi, Credentials, RefreshResult, RefreshVerdict
from simulator.scenario import open_chat
from simulator.server import ChatServer
from simulator.transcript import EventSpec
from tests.processes import wait_for

SERVICE = "customer-support"
OK_BODY = b'{"statusCode":0,"chatEnded":false,"messages":[],"nextPosition":1}'

# Request number on this connection -> the raw reply; a list is sent in parts, 0.1 s apart (as separate
# TCP segments); None = hang up (also as a part of a list).
Reply = Callable[[int], bytes | list[bytes | None] | None]


def reply(status: int = 200, body: bytes = OK_BODY, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


class ServerFactory(Protocol):
    def __call__(self, answer: Reply, tls: ssl.SSLContext | None = None) -> RawServer: ...


class RawServer:
    """A loopback HTTP server written on sockets, so each test decides exactly what the wire carries."""

    def __init__(self, answer: Reply, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.parts_sent = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the client may hang up (or reset) at any point
            self._converse(conn)

    def _converse(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()
                return  # the client refused our certificate
        with conn:
            buffer, served = b"", 0
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                answer = self.answer(served)
                served += 1
                if answer is None:
                    return  # hang up without a word
                if isinstance(answer, list):
                    for i, part in enumerate(answer):
                        if i:
                            self._stop.wait(0.1)
                        if part is None:
                            return
                        conn.sendall(part)
                        self.parts_sent += 1
                elif answer:
                    conn.sendall(answer)
                else:
                    self._stop.wait(30)  # say nothing at all

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def raw_server() -> Iterator[ServerFactory]:
    servers: list[RawServer] = []

    def start(answer: Reply, tls: ssl.SSLContext | None = None) -> RawServer:
        servers.append(RawServer(answer, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


CREDS = Credentials(user_id="u1", secure_key="k1", alias="117")


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


def test_a_connection_the_server_closed_meanwhile_is_reopened(
    raw_server: ServerFactory,
) -> None:
    # Each connection serves one request, then the server hangs up without `Connection: close`.
    server = raw_server(lambda n: reply() if n == 0 else None)
    with contextlib.closing(ChatApi(server.url, timeout_s=5)) as api:
        verdicts = [api.refresh(SERVICE, "s1", CREDS, 1).verdict for _ in range(3)]
    assert verdicts == [RefreshVerdict.OK] * 3
    assert server.connections >= 3


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


def test_replies_are_bounded(raw_server: ServerFactory) -> None:
    server = raw_server(lambda n: reply(200, b"x" * 5000))
    with contextlib.closing(FormClient(server.url, timeout_s=5, max_reply_bytes=4096)) as client:
        with pytest.raises(ReplyTooLarge):
            client.post_form("/refresh", {"a": "b"})
        server.answer = lambda n: reply()
        assert client.post_form("/refresh", {"a": "b"}) == (200, OK_BODY)  # a fresh connection
    assert server.connections == 2


def test_cookies_are_never_sent_back(raw_server: ServerFactory) -> None:
    server = raw_server(lambda n: reply(extra="Set-Cookie: JSESSIONID=chat-one; Path=/\r\n"))
    with contextlib.closing(ChatApi(server.url + "/gms-prefix/", timeout_s=5)) as api:
        api.refresh(SERVICE, "s1", CREDS, 1)
        api.refresh(SERVICE, "s2", CREDS, 1)
    assert server.requests[1].startswith(b"POST /gms-prefix/genesys/2/chat/customer-support/s2/refresh ")
    assert b"cookie" not in server.requests[1].lower()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_is_verified_against_the_configured_ca(
    raw_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=gms"
    command += " -addext subjectAltName=IP:127.0.0.1"
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = raw_server(lambda n: reply(), tls)
    with contextlib.closing(ChatApi(server.url, timeout_s=5)) as api:
        untrusted = api.refresh(SERVICE, "s1", CREDS, 1)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # how an operator trusts a private CA
    with contextlib.closing(ChatApi(server.url, timeout_s=5)) as api:
        trusted = api.refresh(SERVICE, "s1", CREDS, 1)
    assert (untrusted.verdict, untrusted.reason) == (RefreshVerdict.RETRY, "SSLCertVerificationError")
    assert trusted.verdict is RefreshVerdict.OK
    assert server.requests[-1].startswith(b"POST /genesys/2/chat/customer-support/s1/refresh ")


def alias_of(result: RefreshResult) -> str | int | None:
    return result.response.alias if result.response is not None else None


def own_reply(server: RawServer) -> bytes:
    """A reply naming the chat of the request it answers (as its alias)."""
    chat = server.requests[-1].split(b"/")[5]  # POST /genesys/2/chat/{service}/{chat}/refresh
    return reply(body=b'{"statusCode":0,"alias":"%s","messages":[]}' % chat)


def test_interim_1xx_replies_are_skipped(raw_server: ServerFactory) -> None:
    # http.client only skips 100 Continue: a 103 taken for the answer would leave the real reply on the
    # socket, to be read by the next request, for another chat.
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    server = raw_server(lambda n: [early_hints, own_reply(server)] if n == 0 else own_reply(server))
    with contextlib.closing(ChatApi(server.url, timeout_s=5)) as api:
        results = [api.refresh(SERVICE, chat, CREDS, 1) for chat in ("a", "b")]
    assert [(r.verdict, alias_of(r)) for r in results] == [(RefreshVerdict.OK, "a"), (RefreshVerdict.OK, "b")]


def test_a_stray_reply_on_an_idle_connection_is_never_taken_for_the_next_one(
    raw_server: ServerFactory,
) -> None:
    stray = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
    server = raw_server(lambda n: [own_reply(server), stray])
    with contextlib.closing(ChatApi(server.url, timeout_s=5)) as api:
        first = api.refresh(SERVICE, "a", CREDS, 1)
        wait_for(lambda: server.parts_sent == 2)  # the stray reply now waits on the idle connection
        second = api.refresh(SERVICE, "b", CREDS, 1)
    assert (alias_of(first), second.verdict, alias_of(second)) == ("a", RefreshVerdict.OK, "b")
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n" + b"x" * 10000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-ffffffffffffffffffff\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n{}",
    ],
    ids=["negative-chunk", "huge-negative-chunk", "huge-content-length"],
)
def test_broken_framing_is_a_retry_not_a_crash(raw_server: ServerFactory, answer: bytes) -> None:
    server = raw_server(lambda n: answer)
    with contextlib.closing(FormClient(server.url, timeout_s=0.5, max_reply_bytes=4096)) as client:
        with pytest.raises((http.client.HTTPException, OSError)):
            client.post_form("/refresh", {"a": "b"})
    with contextlib.closing(ChatApi(server.url, timeout_s=0.5)) as api:
        assert api.refresh(SERVICE, "s1", CREDS, 1).verdict is RefreshVerdict.RETRY


def test_idle_connections_are_not_reused_past_their_expiry(
    raw_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(form_client, "IDLE_EXPIRY_S", 0.0)  # every connection has been idle too long
    server = raw_server(lambda n: reply())
    with contextlib.closing(ChatApi(server.url, timeout_s=5)) as api:
        verdicts = [api.refresh(SERVICE, "s1", CREDS, 1).verdict for _ in range(3)]
    assert verdicts == [RefreshVerdict.OK] * 3
    assert server.connections == 3


def test_credentials_in_the_url_are_sent_as_basic_auth(raw_server: ServerFactory) -> None:
    server = raw_server(lambda n: reply())
    with contextlib.closing(
        ChatApi(server.url.replace("http://", "http://relay:p%40ss@"), timeout_s=5)
    ) as api:
        assert api.refresh(SERVICE, "s1", CREDS, 1).verdict is RefreshVerdict.OK
    assert b"\r\nAuthorization: Basic cmVsYXk6cEBzcw==\r\n" in server.requests[0]  # relay:p@ss


# The deadline: `timeout_s` bounds the whole call. Each server below keeps every single read or write well
# within the timeout, so only a bound on the sum ends the call in time (the old per-step timeout took 4 s
# or more, and mostly returned the reply in the end).
TIMEOUT_S = 0.3
WITHIN_S = 1.5  # the timeout plus a generous allowance for a loaded machine


def drip(data: bytes) -> list[bytes | None]:
    """`data` one byte per part, so 0.1 s a byte."""
    return [data[i : i + 1] for i in range(len(data))]


def hang_up_after(seconds: float) -> list[bytes | None]:
    return [b""] * round(seconds / 0.1) + [None]


def assert_times_out(client: FormClient, within_s: float = WITHIN_S) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.post_form("/refresh", {"a": "b"})
    assert time.monotonic() - started < within_s


@pytest.mark.parametrize(
    "answer",
    [
        [*drip(b"HTTP/1.1 200 " + b"O" * 32 + b"\r\n"), b"Content-Length: 2\r\n\r\n{}"],
        [b"HTTP/1.1 200 OK\r\n", *drip(b"X-Pad: " + b"p" * 33 + b"\r\n"), b"Content-Length: 2\r\n\r\n{}"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", *drip(b"x" * 40)],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", *[b"1\r\nx\r\n"] * 40, b"0\r\n\r\n"],
        [*[b"HTTP/1.1 103 Early Hints\r\n\r\n"] * 40, reply()],
    ],
    ids=["status-line", "headers", "content-length-body", "chunked-body", "interim-replies"],
)
def test_a_dripped_reply_cannot_stretch_the_call_past_its_timeout(
    raw_server: ServerFactory, answer: list[bytes | None]
) -> None:
    server = raw_server(lambda n: answer)
    with contextlib.closing(FormClient(server.url, timeout_s=TIMEOUT_S)) as client:
        assert_times_out(client)
        server.answer = lambda n: reply()
        assert client.post_form("/refresh", {"a": "b"}) == (200, OK_BODY)  # the next call has its own
    assert server.connections == 2  # the half-read connection was dropped


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_accepts_and_never_answers_times_out_on_time(scheme: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody reads or answers
    url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}"
    with contextlib.closing(listener), contextlib.closing(FormClient(url, timeout_s=TIMEOUT_S)) as client:
        assert_times_out(client)


def test_a_dripped_tls_handshake_times_out_on_time() -> None:
    # A TLS record header announcing 16 KiB, then its bytes one at a time: OpenSSL waits for the record.
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError), listener.accept()[0] as conn:
            conn.recv(65536)  # the ClientHello
            conn.sendall(b"\x16\x03\x03\x40\x00")
            for _ in range(40):
                time.sleep(0.1)
                conn.sendall(b"\x00")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    with contextlib.closing(listener), contextlib.closing(FormClient(url, timeout_s=TIMEOUT_S)) as client:
        assert_times_out(client)


def test_a_stale_connection_and_its_resend_share_one_deadline(raw_server: ServerFactory) -> None:
    # The kept-alive connection takes 0.7 s to turn out stale, within the 1 s timeout; the resend then
    # meets silence. Each exchange alone stays within the timeout, their sum (1.7 s) does not.
    def answer(n: int) -> bytes | list[bytes | None] | None:
        if server.connections == 1:
            return reply() if n == 0 else hang_up_after(0.7)
        return b""  # the resend, on a fresh connection: say nothing

    server = raw_server(answer)
    with contextlib.closing(FormClient(server.url, timeout_s=1.0)) as client:
        assert client.post_form("/refresh", {"a": "b"}) == (200, OK_BODY)
        assert_times_out(client, within_s=1.5)
    assert (server.connections, len(server.requests)) == (2, 3)  # the resend was made
