"""The keep-alive form poster (shared/form_client.py) against misbehaving loopback servers; its deadline."""

from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from shared import form_client
from shared.form_client import FormClient, ReplyTooLarge
from shared.gms import ChatApi, RefreshResult, RefreshVerdict
from tests.processes import wait_for
from tests.shared.raw_http import CREDS, OK_BODY, SERVICE, RawServer, ServerFactory, reply


def test_a_connection_the_server_closed_meanwhile_is_reopened(
    raw_server: ServerFactory,
) -> None:
    # Each connection serves one request, then the server hangs up without `Connection: close`.
    server = raw_server(lambda n: reply() if n == 0 else None)
    with contextlib.closing(ChatApi(server.url, timeout_s=5)) as api:
        verdicts = [api.refresh(SERVICE, "s1", CREDS, 1).verdict for _ in range(3)]
    assert verdicts == [RefreshVerdict.OK] * 3
    assert server.connections >= 3


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
