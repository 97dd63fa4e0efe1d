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
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def busy_ports(host: str, port: int, dashboard_port: int | None) -> list[str]:
    """What `up` cannot listen on, each with the option that changes it (`dashboard_port` None: no
    dashboard). Checked before anything starts: a busy port is otherwise a child's log line and a
    stopped stack."""
    problems = []
    why = bind_problem(host, port)
    if why:
        problems.append(f"port {port} (ingress) is not available: {why}; choose another with --port")
    why = bind_problem("127.0.0.1", dashboard_port) if dashboard_port is not None else None
    if why:
        problems.append(
            f"port {dashboard_port} (rq-dashboard) is not available: {why}; choose another with "
            "--dashboard-port, or run without the dashboard: --no-dashboard"
        )
    return problems
