"""A keep-alive HTTP/1.1 form poster for the Refresh hot path, one connection per thread.

Refresh is the busiest outbound call a worker makes (hundreds a second). The standard library's
`http.client` spends about a third of httpx's CPU per request here (~200 vs ~700 us measured on
the CI machine), and every refresh thread keeps its own connection, so no pool lock is needed.

`timeout_s` bounds a whole call, not each socket operation as http.client's own timeout does: a worker
holds a chat's lease while its Refresh runs, and another worker may take the chat once the lease ends.
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import threading
import time
from email.message import Message
from typing import Any, NamedTuple
from urllib.parse import unquote, urlencode, urlsplit

# A Refresh reply holds a page of transcript; anything this big is not one.
MAX_REPLY_BYTES = 8 * 1024 * 1024

# A kept-alive connection idle this long is closed rather than reused: a NAT or load balancer may have
# dropped it silently (httpx's keepalive_expiry was 5 s).
IDLE_EXPIRY_S = 4.0

# Errors that mean "the kept-alive connection was closed meanwhile, before any reply". The request is
# sent once more on a fresh connection: the server may have seen it, which is harmless for Refresh (a
# read from a transcript position that a retry would repeat anyway).
_STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


_MAX_LINE = 65536  # http.client's own limits
_MAX_INTERIM_HEADERS = 100


class _Response(http.client.HTTPResponse):
    """http.client's response, made strict where it is lax: interim 1xx replies (103 Early Hints, 102)
    are skipped, not taken for the answer, which would leave the real reply on the socket for the next
    request to read; negative chunk sizes are refused (-1 would read to EOF, unbounded)."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            status: tuple[str, int, str] = super()._read_status()  # type: ignore[misc]
            if not 102 <= status[1] < 200:  # 100 Continue is skipped by http.client itself
                return status
            self._skip_headers()

    def _skip_headers(self) -> None:
        assert self.fp is not None
        for _ in range(_MAX_INTERIM_HEADERS):
            line = self.fp.readline(_MAX_LINE + 1)
            if len(line) > _MAX_LINE:
                raise http.client.LineTooLong("interim reply header")
            if line in (b"\r\n", b"\n", b""):
                return
        raise http.client.HTTPException(f"more than {_MAX_INTERIM_HEADERS} interim reply headers")

    def _read_next_chunk_size(self) -> int:
        size: int = super()._read_next_chunk_size()  # type: ignore[misc]
        if size < 0:
            raise ValueError("negative chunk size")  # http.client reports it as IncompleteRead
        return size


class _Deadline:
    """When the current call must be over; one per connection, set by each post_form, read by the
    connection's socket before every step that can block."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = 0.0  # time.monotonic()

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")  # what a socket timeout says
        return left


class _DeadlineSocket(socket.socket):
    """A socket whose every recv and send may block only for what is left of the call's deadline.

    http.client gives its timeout to the socket, which bounds each recv or send, not their sum: a server
    dripping a byte every so often keeps a call alive for ever. Setting the timeout to the time remaining
    before each step (a clock read and one ioctl, about a microsecond) bounds the sum, without a timer
    thread. The steps CPython runs in C bound themselves by the timeout they start with, in total: the
    connect, a plain sendall, and for TLS the whole handshake and each record read or write. The
    arguments pass through untouched because socket and SSLSocket disagree on their defaults."""

    deadline: _Deadline | None = None  # None until connected: SSLSocket's own setup probes with recv(1)

    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        if self.deadline is not None:
            self.settimeout(self.deadline.remaining())
        return super().recv(*args, **kwargs)

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        if self.deadline is not None:
            self.settimeout(self.deadline.remaining())
        return super().recv_into(*args, **kwargs)

    def send(self, *args: Any, **kwargs: Any) -> int:
        if self.deadline is not None:
            self.settimeout(self.deadline.remaining())
        return super().send(*args, **kwargs)

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        # SSLSocket.sendall loops over self.send, which sets the timeout again for each piece
        if self.deadline is not None:
            self.settimeout(self.deadline.remaining())
        super().sendall(*args, **kwargs)


class _DeadlineSSLSocket(_DeadlineSocket, ssl.SSLSocket):
    """What our TLS context's wrap_socket returns (SSLContext.sslsocket_class)."""


class _Connection(http.client.HTTPConnection):
    """http.client's connection, opened and run within the deadline of the call using it."""

    response_class = _Response

    def __init__(self, host: str, port: int | None, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self.deadline = _Deadline()
        self.idle_since = 0.0  # when its last reply ended (time.monotonic())
        # http.client opens its socket through this hook (socket.create_connection by default)
        self._create_connection = self._open_socket

    def _open_socket(self, address: tuple[str, int], *_ignored: object) -> socket.socket:
        """socket.create_connection, but all the addresses tried share what is left of the deadline.

        Name resolution is the one step left unbounded: getaddrinfo takes no timeout, and bounding it
        would cost a thread per connect. It runs only when a connection is opened, and the resolver's
        own timeout (resolv.conf) bounds it."""
        host, port = address
        error: OSError = OSError(f"no address found for {host!r}")
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            sock = _DeadlineSocket(family, kind, proto)
            try:
                sock.settimeout(self.deadline.remaining())
                sock.connect(sockaddr)
                sock.settimeout(self.deadline.remaining())  # what the TLS handshake may still take
                return sock
            except TimeoutError:
                sock.close()
                raise  # the deadline has passed: no time for another address
            except OSError as exc:
                sock.close()
                error = exc
        raise error

    def connect(self) -> None:
        super().connect()  # over TLS, HTTPSConnection.connect makes the _DeadlineSSLSocket
        sock = self.sock
        assert isinstance(sock, _DeadlineSocket), "a TLS context without sslsocket_class set"
        sock.deadline = self.deadline


class _TLSConnection(_Connection, http.client.HTTPSConnection):
    """The same over TLS (HTTPSConnection's connect wraps the socket _Connection opens)."""


class Reply(NamedTuple):
    status: int
    body: bytes
    headers: Message


class BadReply(http.client.HTTPException):
    """The reply broke HTTP framing in a way http.client reports as a plain ValueError or worse."""


class ReplyTooLarge(http.client.HTTPException):
    """The server sent more than MAX_REPLY_BYTES."""


class FormClient:
    """POST url-encoded forms to one origin; returns (status, body).

    Raises TimeoutError when the whole call (connect, TLS handshake, sending, the one resend on a stale
    kept-alive connection, and reading the status line, headers and body) has not ended `timeout_s`
    after it began, however the server paces its bytes; OSError or http.client.HTTPException for other
    transport failures. No cookies, no redirects, no proxies: GMS is reached directly, and a cookie GMS
    sets for one chat must never ride along with another.
    """

    def __init__(self, base_url: str, timeout_s: float, max_reply_bytes: int = MAX_REPLY_BYTES) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._tls = ssl.create_default_context()
            self._tls.sslsocket_class = _DeadlineSSLSocket
        self._host = parts.hostname
        self._port = parts.port
        self.path_prefix = parts.path.rstrip("/")
        self._authorization: str | None = None  # `user:password@` in the URL: HTTP basic auth, as httpx did
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        self._timeout_s = timeout_s
        self._max_reply_bytes = max_reply_bytes
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()

    def post_form(self, path: str, form: dict[str, str]) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        reply = self.post(path, urlencode(form).encode(), headers)
        return reply.status, reply.body

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> Reply:
        """POST `body` to `path` (relative to the base URL's path, query included) within the deadline."""
        headers = {"User-Agent": "gms-push-relay", **headers}
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        conn = self._connection()
        conn.deadline.at = time.monotonic() + self._timeout_s  # for everything below, the resend too
        if conn.sock is not None and not _reusable(conn):
            conn.close()
        reused = conn.sock is not None
        url = self.path_prefix + path
        try:
            try:
                return self._exchange(conn, url, body, headers)
            except _STALE:
                if not reused:
                    raise
                conn.close()
                return self._exchange(conn, url, body, headers)  # once more, on a fresh connection
        except BaseException as exc:
            conn.close()  # a half-read reply must never be mistaken for the next one
            raise _transport_error(exc) from None

    def _exchange(self, conn: _Connection, url: str, body: bytes, headers: dict[str, str]) -> Reply:
        conn.request("POST", url, body=body, headers=headers)
        reply = conn.getresponse()
        data = reply.read(self._max_reply_bytes + 1)
        if len(data) > self._max_reply_bytes:
            raise ReplyTooLarge(f"reply larger than {self._max_reply_bytes} bytes")
        if reply.length:  # fewer bytes than Content-Length said: the peer closed early
            raise http.client.IncompleteRead(data, reply.length)
        if not reply.isclosed() or reply.will_close:
            conn.close()  # never read an unbounded rest; an unframed reply ends the connection
        else:
            conn.idle_since = time.monotonic()
        return Reply(reply.status, data, reply.headers)

    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._tls is not None:
                conn = _TLSConnection(self._host, self._port, context=self._tls)
            else:
                conn = _Connection(self._host, self._port)
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            connections, self._open = self._open, set()
        for conn in connections:
            conn.close()


def _reusable(conn: _Connection) -> bool:
    """Not idle too long, and nothing waiting on the socket: an EOF, or bytes nobody asked for (a stray
    reply), which the next request would otherwise read as its own."""
    if time.monotonic() - conn.idle_since > IDLE_EXPIRY_S:
        return False
    sock = conn.sock
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


def _transport_error(exc: BaseException) -> BaseException:
    """What a caller may catch: OSError and HTTPException pass through (an ssl.SSLCertVerificationError is
    both an OSError and a ValueError); ValueError, OverflowError and MemoryError from a malformed reply
    become BadReply."""
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return exc
    if isinstance(exc, (ValueError, OverflowError, MemoryError)):
        return BadReply(type(exc).__name__)
    return exc
