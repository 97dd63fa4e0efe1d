"""`classify` fuzzed directly: a sane notification, or InvalidJson/InvalidPush with a detail."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.classify import MAX_ID_CHARS, MAX_POSITION, classify
from shared.errors import InvalidJson, InvalidPush
from shared.models import Payload, Trigger, WakeUp
from tests.pushes import body, trigger_message
from tests.security.corpus import VALID_PAYLOAD, VALID_TRIGGER, event_with

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["0", "-1", "-2", "1.5", " 7 ", "2147483647", "2147483648", "", "abc", "1_0"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
identifiers = st.one_of(st.text(max_size=6), st.just("deprecated"), st.integers(), st.none(), json_values)


@st.composite
def gms_events(draw: st.DrawFn) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if draw(st.booleans()):
        result["index"] = draw(st.integers(min_value=-5, max_value=2**32) | scalars)
    if draw(st.integers(0, 3)):
        result["type"] = draw(st.sampled_from(["PushUrl", "Message", "ParticipantLeft"]) | scalars)
    if draw(st.booleans()):
        user_data = {
            name: draw(st.integers(min_value=-3, max_value=2**32) | scalars)
            for name in ("notify-position", "notify-attempt")
            if draw(st.integers(0, 4))
        }
        for name in ("session-id", "user-id", "secure-key"):
            if draw(st.booleans()):
                user_data[name] = draw(identifiers)
        result["userData"] = user_data
    result.update(draw(st.dictionaries(st.sampled_from(["text", "x-sim", "from"]), json_values, max_size=2)))
    return result


@st.composite
def push_messages(draw: st.DrawFn) -> Any:
    message: dict[str, Any] = {}
    if draw(st.integers(0, 4)):
        message["messages"] = draw(st.lists(gms_events() | json_values, max_size=4))
    for name in ("chatId", "userId", "alias", "chatEnded", "secureKey", "userData"):
        if draw(st.integers(0, 3)) == 0:
            message[name] = draw(identifiers)
    return draw(st.sampled_from([message, json.dumps(message)]))  # an object, or a string holding JSON


@st.composite
def push_bodies(draw: st.DrawFn) -> bytes:
    push: dict[str, Any] = {}
    if draw(st.integers(0, 5)):
        push["deviceId"] = draw(st.text(min_size=1, max_size=8) | identifiers)
    if draw(st.integers(0, 5)):
        push["message"] = draw(push_messages() | json_values)
    return json.dumps(push, ensure_ascii=draw(st.booleans())).encode()


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """A valid trigger or payload with a slice replaced by arbitrary bytes."""
    base = draw(st.sampled_from([VALID_TRIGGER, VALID_PAYLOAD, body(trigger_message(-1, secure_key="k"))]))
    start = draw(st.integers(0, len(base)))
    end = draw(st.integers(start, min(len(base), start + 8)))
    return base[:start] + draw(st.binary(max_size=8)) + base[end:]


any_body = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    push_bodies(),
    mutated_bodies(),
)


def _check_classify(content: bytes) -> None:
    try:
        note = classify(content)
    except (InvalidJson, InvalidPush) as exc:
        assert exc.detail
        return
    assert isinstance(note, Trigger | Payload | WakeUp)
    assert 1 <= len(note.device_id) <= MAX_ID_CHARS and note.device_id.isprintable()
    if isinstance(note, Trigger):
        assert -1 <= note.position <= MAX_POSITION
        assert 0 <= note.attempt <= MAX_POSITION
    if isinstance(note, Payload):
        for item in note.events:
            assert 0 <= item.index <= MAX_POSITION
            assert isinstance(item.type, str)
            text = bytes(item.raw).decode("utf-8")  # forwarded byte for byte: it must be UTF-8 JSON
            assert json.loads(text)["index"] == item.index


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=any_body)
def test_classify_returns_a_notification_or_a_precise_400(content: bytes) -> None:
    _check_classify(content)


# Bytes that can sit inside a JSON string literal: no quote, backslash or control character.
string_bytes = st.binary(min_size=1, max_size=12).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c not in b'"\\') or b"x"
)


@settings(max_examples=300, deadline=None)
@given(member=st.sampled_from(["text", "x_sim"]), raw=string_bytes)
def test_classify_never_accepts_an_event_that_is_not_utf8(member: str, raw: bytes) -> None:
    """An accepted event is forwarded byte for byte to streams and webhooks, so it must be UTF-8 JSON."""
    content = event_with(member, b'"' + raw + b'"')
    try:
        note = classify(content)
    except InvalidJson:
        return
    assert isinstance(note, Payload)
    for item in note.events:
        bytes(item.raw).decode("utf-8")  # raises UnicodeDecodeError for what no JSON reader accepts
