"""What `gms-relay up` exposes: the address its ingress listens on, and the push token guarding it.

GMS cannot sign its pushes, so the token in its `customhttp.url` is their only proof of origin. `up`
therefore makes one up when PUSH_TOKEN is unset (unless ALLOW_OPEN_PUSH=true says otherwise on
purpose), listens on loopback unless `--host` says otherwise, and says so when it does not.
"""

from __future__ import annotations

import ipaddress
import secrets

# 256 random bits, URL-safe: it travels in GMS's customhttp.url as ?token=.
PUSH_TOKEN_BYTES = 32


def ensure_push_token(env: dict[str, str]) -> str | None:
    """Set a fresh PUSH_TOKEN in `env` when it has none (every child, the simulator included, gets
    it) and return it; None when the operator set one, or chose an open ingress with ALLOW_OPEN_PUSH."""
    if env.get("PUSH_TOKEN", "").strip() or env.get("ALLOW_OPEN_PUSH", "").strip().lower() == "true":
        return None
    token = secrets.token_urlsafe(PUSH_TOKEN_BYTES)
    env["PUSH_TOKEN"] = token
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def connect_host(host: str) -> str:
    """Where this machine reaches a server listening on `host` (a wildcard means every interface,
    loopback included); an IPv6 address in brackets, ready for a URL."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def exposure_warning(host: str, push_token_set: bool) -> str | None:
    """A warning for an ingress listening beyond this machine; None on loopback."""
    if is_loopback(host):
        return None
    guard = "its push token" if push_token_set else "NOTHING (ALLOW_OPEN_PUSH=true)"
    return (
        f"warning: the ingress listens on {host}, reachable from the network: POST /push is guarded by "
        f"{guard}, /metrics and /readyz by nothing; put only /push in GMS's reach and the browser "
        "endpoints behind TLS (README: Security)"
    )
