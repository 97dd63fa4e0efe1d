"""A keep-alive HTTP/1.1 form poster for the Refresh hot path, one connection per thread.

Refresh is the busiest outbound call a worker makes (hundreds a second). The standard library's
`http.client` spends about a third of httpx's CPU per request here (~200 vs ~700 us measured on
the CI machine), and every refresh thread keeps its own connection, so no pool lock is needed.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from urllib.parse import urlencode, urlsplit

# A Refresh reply holds a page of transcript; anything this big is not one.
MAX_REPLY_BYTES = 8 * 1024 * 1024

# Errors that mean "the kept-alive connection was closed by the server meanwhile": safe to resend once,
# since nothing was answered on it.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class ReplyTooLarge(http.client.HTTPException):
    """The server sent more than MAX_REPLY_BYTES."""


class FormClient:
    """POST url-encoded forms to one origin; returns (status, body).

    Raises TimeoutError when a connect, send or read step exceeds `timeout_s`, OSError or
    http.client.HTTPException for other transport failures. No cookies, no redirects, no proxies:
    GMS is reached directly, and a cookie GMS sets for one chat must never ride along with another.
    """

    def __init__(self, base_url: str, timeout_s: float, max_reply_bytes: int = MAX_REPLY_BYTES) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._host = parts.hostname
        self._port = parts.port
        self.path_prefix = parts.path.rstrip("/")
        self._timeout_s = timeout_s
        self._max_reply_bytes = max_reply_bytes
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()

    def post_form(self, path: str, form: dict[str, str]) -> tuple[int, bytes]:
        body = urlencode(form).encode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "User-Agent": "gms-push-relay",
        }
        conn = self._connection()
        reused = conn.sock is not None
        try:
            return self._exchange(conn, self.path_prefix + path, body, headers)
        except _STALE:
            conn.close()
            if not reused:
                raise
            return self._resend(conn, self.path_prefix + path, body, headers)
        except BaseException:
            conn.close()  # a half-read reply must never be mistaken for the next one
            raise

    def _resend(
        self, conn: http.client.HTTPConnection, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        try:
            return self._exchange(conn, url, body, headers)
        except BaseException:
            conn.close()
            raise

    def _exchange(
        self, conn: http.client.HTTPConnection, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        conn.request("POST", url, body=body, headers=headers)
        reply = conn.getresponse()
        data = reply.read(self._max_reply_bytes + 1)
        if len(data) > self._max_reply_bytes:
            raise ReplyTooLarge(f"reply larger than {self._max_reply_bytes} bytes")
        if not reply.isclosed():
            reply.read()  # drain the (empty) rest so the connection can be reused
        if reply.will_close:
            conn.close()
        return reply.status, data

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._tls is not None:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout_s, context=self._tls
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            connections, self._open = self._open, set()
        for conn in connections:
            conn.close()
