"""Caller authentication: GMS can only carry a token in the URL, so three places are accepted."""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Sequence
from urllib.parse import parse_qsl

# One token, or the settings' list of them (rotation: PUSH_TOKEN=new,old accepts both).
Accepted = str | Sequence[str]
# Logged at start-up and shown by /readyz when the operator chose an open POST /push.
OPEN_PUSH_WARNING = (
    "ALLOW_OPEN_PUSH=true and no PUSH_TOKEN: POST /push accepts pushes from anyone who can reach it "
    "(forged chat events); set PUSH_TOKEN unless only GMS can reach this port"
)


def _equal(given: str, expected: Accepted) -> bool:
    """Compared in constant time with every accepted token, with no early exit: the time taken does
    not tell whether, or which, one matched."""
    data, ok = given.encode(), False
    for token in (expected,) if isinstance(expected, str) else expected:
        ok |= hmac.compare_digest(data, token.encode())
    return ok


def push_token_ok(expected: Accepted, query_string: bytes, authorization: str | None) -> bool:
    """`?token=`, `Authorization: Bearer <token>`, or the basic-auth password; compared in constant time."""
    ok = False
    if authorization:
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            ok = _equal(value.strip(), expected)
        elif scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, ValueError, UnicodeDecodeError):
                decoded = ""
            ok = _equal(decoded.partition(":")[2], expected)
    if query_string and b"token=" in query_string:
        tokens = [value for name, value in parse_qsl(query_string.decode("latin-1")) if name == "token"]
        if len(tokens) != 1:
            return False  # one request may not try several tokens
        ok = _equal(tokens[0], expected) or ok
    return ok


def bearer_ok(expected: Accepted, authorization: str | None) -> bool:
    scheme, _, value = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and _equal(value.strip(), expected)


class FailureThrottle:
    """Per-address limit on failed authentications, so a token cannot be brute-forced at wire speed."""

    def __init__(self, max_failures: int = 20, window_s: float = 60.0, max_tracked: int = 10000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_tracked = max_tracked
        self._failures: dict[str, tuple[float, int]] = {}

    def blocked(self, address: str) -> bool:
        entry = self._failures.get(address)
        if entry is None:
            return False
        since, failures = entry
        if time.monotonic() - since > self.window_s:
            del self._failures[address]
            return False
        return failures >= self.max_failures

    def failed(self, address: str) -> None:
        now = time.monotonic()
        since, failures = self._failures.get(address, (now, 0))
        if now - since > self.window_s:
            since, failures = now, 0
        if len(self._failures) >= self.max_tracked and address not in self._failures:
            self._failures.clear()  # bounded memory under a spray of addresses
        self._failures[address] = (since, failures + 1)
