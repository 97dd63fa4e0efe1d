"""Device tokens (shared/device_tokens.py): what verifies, what never does, and key rotation."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import device_tokens
from shared.errors import ConfigError
from shared.settings import load_settings

SECRET = "a-device-token-secret"
NOW = 1_800_000_000.0


def test_a_token_names_its_device_until_it_expires() -> None:
    token, expires_at = device_tokens.issue(SECRET, "device-1", 600, NOW)
    assert expires_at == int(NOW) + 600
    assert device_tokens.verify(SECRET, token, NOW) == "device-1"
    assert device_tokens.verify(SECRET, token, expires_at - 1) == "device-1"
    assert device_tokens.verify(SECRET, token, expires_at) is None


def test_a_token_is_url_safe_and_carries_no_secret() -> None:
    token, _ = device_tokens.issue(SECRET, "device/1 é", 60, NOW)
    assert token.isascii() and not set(token) - set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
    )
    assert SECRET not in token
    assert device_tokens.verify(SECRET, token, NOW) == "device/1 é"


def test_another_secret_or_any_change_breaks_it() -> None:
    token, _ = device_tokens.issue(SECRET, "device-1", 600, NOW)
    assert device_tokens.verify("another-secret-entirely", token, NOW) is None
    version, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    for d, e in ((claims["d"], claims["e"] + 3600), ("device-2", claims["e"])):
        forged = base64.urlsafe_b64encode(json.dumps({"d": d, "e": e}).encode()).rstrip(b"=").decode()
        assert device_tokens.verify(SECRET, f"{version}.{forged}.{signature}", NOW) is None
    assert device_tokens.verify(SECRET, f"dt0.{payload}.{signature}", NOW) is None
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    assert device_tokens.verify(SECRET, f"{version}.{payload}.{flipped}", NOW) is None


@pytest.mark.parametrize(
    "junk",
    ["", ".", "..", "dt1..", "dt1.x.y", "dt1.e30.!!!", "Bearer x", "dt1." + "A" * 2000, "dt1.é.x"],
)
def test_junk_never_verifies(junk: str) -> None:
    assert device_tokens.verify(SECRET, junk, NOW) is None


@given(st.text(max_size=300))
def test_no_string_verifies_without_the_secret(text: str) -> None:
    assert device_tokens.verify(SECRET, text, NOW) is None


def test_rotation_the_first_secret_signs_and_each_verifies() -> None:
    new, old = "the-new-device-secret", "the-old-device-secret"
    from_old, _ = device_tokens.issue(old, "d1", 600, NOW)
    from_both, _ = device_tokens.issue([new, old], "d1", 600, NOW)
    assert device_tokens.verify([new, old], from_old, NOW) == "d1"  # tokens out there keep working
    assert device_tokens.verify([new, old], from_both, NOW) == "d1"
    assert device_tokens.verify(new, from_both, NOW) == "d1"  # signed with the new one
    assert device_tokens.verify(old, from_both, NOW) is None
    assert device_tokens.verify(new, from_old, NOW) is None  # the old secret dropped: its tokens end


def test_signing_keys_keep_the_settings_order() -> None:
    assert device_tokens.signing_keys("a,b") == ("a,b",)  # a string is one whole secret
    assert device_tokens.signing_keys(("new", "old")) == ("new", "old")  # DEVICE_TOKEN_SECRET=new,old


def test_what_cannot_be_issued() -> None:
    for device_id in ("", "x" * 257, "line\nbreak"):
        with pytest.raises(ValueError):
            device_tokens.issue(SECRET, device_id, 60, NOW)
    with pytest.raises(ValueError):
        device_tokens.issue(SECRET, "d1", 0, NOW)
    with pytest.raises(ValueError):
        device_tokens.issue([], "d1", 60, NOW)


def test_a_short_secret_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="DEVICE_TOKEN_SECRET must be at least 16 characters"):
        load_settings({"DEVICE_TOKEN_SECRET": "short"})
    settings = load_settings(
        {"DEVICE_TOKEN_SECRET": "x" * 16, "DEVICE_TOKEN_TTL_S": "60", "SSE_HEARTBEAT_S": "5"}
    )
    assert (settings.device_token_secret, settings.device_token_ttl_s, settings.sse_heartbeat_s) == (
        ("x" * 16,),
        60,
        5,
    )
