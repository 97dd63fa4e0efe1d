"""Standard Webhooks signatures: HMAC-SHA256 over "{id}.{timestamp}.{body}"."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from shared.errors import ConfigError

_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret (the prefix is optional, as in the reference libs)."""
    encoded = secret[len(_PREFIX) :] if secret.startswith(_PREFIX) else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("WEBHOOK_SECRET must be whsec_ followed by base64") from None
    if len(key) < 16:
        raise ConfigError("WEBHOOK_SECRET must decode to at least 16 bytes")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()
