"""Device tokens: stateless bearer tokens, each valid for one device until it expires.

A device (a browser, a phone app) reads its own event stream and, later, acts on its own chats with
one of these instead of the operator's `API_TOKEN`. Nothing is stored per token: the token carries
the device id and its expiry, signed with HMAC-SHA256 under `DEVICE_TOKEN_SECRET`, so any ingress
process verifies it without a Redis round trip, and a token cannot be moved to another device.

Format: `dt1.<payload>.<signature>`, both parts base64url without padding; the payload is the JSON
`{"d": deviceId, "e": expiresAt}` (unix seconds) and the signature covers `dt1.<payload>`, so the
version prefix is signed too. Key rotation is built in: every function takes one secret or a
sequence of them, the first signs and each verifies, so an operator can add a new secret in front,
wait one token lifetime, then drop the old one (`signing_keys` is the one place that turns the
setting into that sequence).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

import msgspec

from shared.classify import MAX_ID_CHARS

VERSION = "dt1"
# A token is a few hundred characters for the longest device id (256); anything longer is refused
# before any decoding or HMAC work, so junk in an Authorization header costs nothing.
MAX_TOKEN_CHARS = 1024
_SIGNATURE_BYTES = hashlib.sha256().digest_size

Secrets = str | Sequence[str]


class _Claims(msgspec.Struct, frozen=True):
    d: str  # device id
    e: int  # expiry, unix seconds


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(_Claims)


def signing_keys(setting: str | Sequence[str]) -> tuple[str, ...]:
    """The secrets a `DEVICE_TOKEN_SECRET` setting holds, the signing one first. Settings parses the
    comma-separated list into a tuple (rotation); a single string is one whole secret."""
    return (setting,) if isinstance(setting, str) else tuple(setting)


def valid_device_id(device_id: str) -> bool:
    """What a device id may be: the identifier rule of pushes (1 to MAX_ID_CHARS printable characters)."""
    return 0 < len(device_id) <= MAX_ID_CHARS and device_id.isprintable()


def _keys(secret: Secrets) -> list[bytes]:
    keys = [secret] if isinstance(secret, str) else list(secret)
    if not keys or not all(keys):
        raise ValueError("a device token needs at least one non-empty secret")
    return [key.encode() for key in keys]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed: str) -> bytes:
    return hmac.new(key, signed.encode(), hashlib.sha256).digest()


def issue(secret: Secrets, device_id: str, ttl_s: int, now: float) -> tuple[str, int]:
    """A token for `device_id` valid for `ttl_s` seconds from `now` (unix seconds); returns it with
    its expiry (unix seconds). Signed with the first secret."""
    if not valid_device_id(device_id):
        raise ValueError(f"device_id must be 1 to {MAX_ID_CHARS} printable characters")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    expires_at = int(now) + ttl_s
    signed = f"{VERSION}.{_b64(_ENCODER.encode(_Claims(device_id, expires_at)))}"
    return f"{signed}.{_b64(_mac(_keys(secret)[0], signed))}", expires_at


def verify(secret: Secrets, token: str, now: float) -> str | None:
    """The device id of a genuine, unexpired token, else None (malformed, forged, signed with no
    current secret, or expired: callers answer all of these the same, 401)."""
    keys = _keys(secret)
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        return None
    signed, dot, signature = token.rpartition(".")
    version, _, payload = signed.partition(".")
    if not dot or version != VERSION or not payload:
        return None
    try:
        given = _unb64(signature)
    except (binascii.Error, ValueError):
        return None
    if len(given) != _SIGNATURE_BYTES:
        return None
    # Every key is tried (no early exit), so the time taken does not tell which one matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(_mac(key, signed), given)
    if not matched:
        return None
    try:
        claims = _DECODER.decode(_unb64(payload))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return None  # signed by us, so this never happens unless a secret leaked into a forger's hands
    if not valid_device_id(claims.d) or now >= claims.e:
        return None
    return claims.d
