"""Is a TCP port free to listen on? Asked before a server starts, so that a busy port is one clear
message from the command the operator typed, not a log line of a child process."""

from __future__ import annotations

import socket


def bind_problem(host: str, port: int) -> str | None:
    """Why `port` on `host` cannot be listened on (e.g. "Address already in use"), or None if it can.

    SO_REUSEADDR as uvicorn and redis-server bind: a connection of a stopped server still in
    TIME_WAIT is no conflict for them, so it is none here either. A moment can pass between this
    check and the server's own bind; the server still refuses then, this only makes the usual case
    readable.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None
