"""A loopback HTTP server on raw sockets, so each Refresh-client test decides what the wire carries."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Protocol

from shared.gms import Credentials

SERVICE = "customer-support"
OK_BODY = b'{"statusCode":0,"chatEnded":false,"messages":[],"nextPosition":1}'
CREDS = Credentials(user_id="u1", secure_key="k1", alias="117")

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
