"""Malformed /push bodies: bad JSON and encodings, deep nesting, huge and mistyped members."""

from __future__ import annotations

import json
from collections.abc import Callable

from shared.classify import MAX_ID_CHARS
from shared.settings import Settings
from tests.pushes import body, event, payload_message, trigger_message

LIMIT = Settings().push_max_bytes  # the default PUSH_MAX_BYTES, 65536
DEEP_ARRAY = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
VALID_TRIGGER = body(trigger_message(3))
VALID_PAYLOAD = body(payload_message([event(1, text="TEXT", x_sim="X")]))


def _swap(base: bytes, old: bytes, new: bytes) -> bytes:
    """`base` with its one occurrence of `old` replaced by raw bytes `new` (which may be invalid JSON)."""
    assert base.count(old) == 1, old
    return base.replace(old, new)


def trigger_with(member: str, raw: bytes) -> bytes:
    """A valid trigger (position 3, attempt 4) whose userData member `member` holds the raw JSON `raw`."""
    name = json.dumps(member).encode() + b": "
    current = {"notify-position": b'"3"', "notify-attempt": b'"4"'}[member]
    return _swap(body(trigger_message(3, attempt=4)), name + current, name + raw)


def event_with(member: str, raw: bytes) -> bytes:
    """A valid one-event payload whose event member `member` holds the raw JSON `raw`."""
    current = {"index": b"1", "text": b'"TEXT"', "x_sim": b'"X"'}[member]
    name = json.dumps(member).encode() + b": "
    return _swap(VALID_PAYLOAD, name + current, name + raw)


def _message(raw: bytes) -> bytes:
    return b'{"deviceId": "d1", "message": ' + raw + b"}"


def _device(raw: bytes) -> bytes:
    return b'{"deviceId": ' + raw + b', "message": "dummy message"}'


def _sized(build: Callable[[int], bytes], size: int) -> bytes:
    """`build(n)` pads with n filler characters; returns the body of exactly `size` bytes."""
    padding = size - len(build(0))
    content = build(padding)
    assert len(content) == size
    return content


def wakeup_of_size(size: int) -> bytes:
    return _sized(lambda n: body("w" * n), size)


# Every entry: (body, expected status, expected error code). Each must leave Redis empty.
CORPUS: dict[str, tuple[bytes, int, str]] = {
    # Truncated and invalid JSON.
    "empty-body": (b"", 400, "invalid_json"),
    "whitespace-only": (b"  \r\n\t ", 400, "invalid_json"),
    "truncated-half": (VALID_TRIGGER[: len(VALID_TRIGGER) // 2], 400, "invalid_json"),
    "truncated-last-byte": (VALID_TRIGGER[:-1], 400, "invalid_json"),
    "truncated-inside-string": (VALID_PAYLOAD[: VALID_PAYLOAD.index(b"TEXT") + 2], 400, "invalid_json"),
    "truncated-escape": (b'{"deviceId": "d1", "message": "\\u00', 400, "invalid_json"),
    "unquoted-keys": (b'{deviceId: "d1", message: "x"}', 400, "invalid_json"),
    "single-quotes": (b"{'deviceId': 'd1', 'message': 'x'}", 400, "invalid_json"),
    "trailing-comma": (b'{"deviceId": "d1", "message": "x",}', 400, "invalid_json"),
    "comment": (b'{"deviceId": "d1", /* GMS */ "message": "x"}', 400, "invalid_json"),
    "bare-word": (b"nul", 400, "invalid_json"),
    "form-encoded": (b"deviceId=d1&message=x", 400, "invalid_json"),
    "bad-escape": (_swap(VALID_PAYLOAD, b'"TEXT"', b'"\\x41"'), 400, "invalid_json"),
    "raw-control-char-in-string": (_swap(VALID_PAYLOAD, b'"TEXT"', b'"a\x00b"'), 400, "invalid_json"),
    "lone-surrogate-escape": (_message(b'"\\ud800"'), 400, "invalid_json"),
    "top-level-array": (b'[{"deviceId": "d1", "message": "x"}]', 400, "invalid_push"),
    "top-level-string": (b'"d1"', 400, "invalid_push"),
    "top-level-null": (b"null", 400, "invalid_push"),
    # Encodings: JSON with a byte-order mark, UTF-16, and invalid UTF-8 wherever it can hide.
    "utf8-bom": (b"\xef\xbb\xbf" + VALID_TRIGGER, 400, "invalid_json"),
    "utf16": (VALID_TRIGGER.decode().encode("utf-16"), 400, "invalid_json"),
    "invalid-utf8-device-id": (_device(b'"d\xff1"'), 400, "invalid_json"),
    "invalid-utf8-message-text": (_message(b'"caf\xc3("'), 400, "invalid_json"),
    "overlong-utf8": (_message(b'"\xc0\xaf"'), 400, "invalid_json"),
    "utf8-encoded-surrogate": (_message(b'"\xed\xa0\x80"'), 400, "invalid_json"),
    "truncated-utf8-sequence": (_message(b'"euro \xe2\x82"'), 400, "invalid_json"),
    # msgspec skips members it does not read without checking their UTF-8: these reach the sinks.
    "invalid-utf8-in-event-text": (event_with("text", b'"caf\xe9"'), 400, "invalid_json"),
    "invalid-utf8-in-unknown-event-member": (event_with("x_sim", b'"\xff\xfe"'), 400, "invalid_json"),
    "invalid-utf8-in-message-secure-key": (
        _swap(VALID_TRIGGER, b'"COMETD-ONLY-KEY"', b'"\xfe\xff"'),
        400,
        "invalid_json",
    ),
    # NaN and Infinity are not JSON.
    "nan-event-index": (event_with("index", b"NaN"), 400, "invalid_json"),
    "nan-in-unknown-member": (event_with("x_sim", b"NaN"), 400, "invalid_json"),
    "infinity-position": (trigger_with("notify-position", b"Infinity"), 400, "invalid_json"),
    "minus-infinity-attempt": (trigger_with("notify-attempt", b"-Infinity"), 400, "invalid_json"),
    "float-overflow-position": (trigger_with("notify-position", b"1e400"), 400, "invalid_push"),
    # Trailing garbage after the object.
    "trailing-word": (VALID_TRIGGER + b"xyz", 400, "invalid_json"),
    "trailing-second-object": (VALID_TRIGGER + VALID_TRIGGER, 400, "invalid_json"),
    "trailing-nul": (VALID_TRIGGER + b"\x00", 400, "invalid_json"),
    "trailing-brace": (VALID_TRIGGER + b"}", 400, "invalid_json"),
    # 10,000 levels of nesting, in every position.
    "deep-array-as-device-id": (_device(DEEP_ARRAY), 400, "invalid_push"),
    "deep-object-as-device-id": (_device(DEEP_OBJECT), 400, "invalid_push"),
    "deep-array-as-message": (_message(DEEP_ARRAY), 400, "invalid_json"),
    "deep-object-as-message": (_message(DEEP_OBJECT), 400, "invalid_json"),
    "deep-array-in-message-member": (_message(b'{"x-gms": ' + DEEP_ARRAY + b"}"), 400, "invalid_json"),
    "deep-array-in-event": (event_with("x_sim", DEEP_ARRAY), 400, "invalid_json"),
    "deep-object-in-event": (event_with("x_sim", DEEP_OBJECT), 400, "invalid_json"),
    "deep-array-in-user-data": (trigger_with("notify-attempt", DEEP_ARRAY), 400, "invalid_json"),
    # Huge strings and arrays.
    "device-id-just-under-limit": (
        _sized(lambda n: json.dumps({"deviceId": "d" * n, "message": "x"}).encode(), LIMIT - 1),
        400,
        "invalid_push",
    ),
    "message-just-over-limit": (wakeup_of_size(LIMIT + 1), 413, "payload_too_large"),
    "event-text-just-over-limit": (
        _sized(lambda n: body(payload_message([event(1, text="t" * n)])), LIMIT + 1),
        413,
        "payload_too_large",
    ),
    "one-megabyte": (body("m" * 1_000_000), 413, "payload_too_large"),
    "position-of-5000-digits": (body(trigger_message("9" * 5000)), 400, "invalid_push"),
    "device-id-huge-array": (_device(b"[" + b"0," * 30_000 + b"0]"), 400, "invalid_push"),
    "messages-of-30000-numbers": (_message(b'{"messages": [' + b"0," * 30_000 + b"0]}"), 400, "invalid_push"),
    "messages-of-15000-empty-objects": (
        _message(b'{"messages": [' + b"{}," * 15_000 + b"{}]}"),
        400,
        "invalid_push",
    ),
    "300-valid-events-then-a-bad-index": (
        body(payload_message([*(event(i) for i in range(1, 301)), event(-1)])),
        400,
        "invalid_push",
    ),
    "user-data-huge-array": (
        trigger_with("notify-position", b"[" + b"1," * 20_000 + b"1]"),
        400,
        "invalid_push",
    ),
    # Wrong member types: deviceId.
    "device-id-int": (_device(b"5"), 400, "invalid_push"),
    "device-id-null": (_device(b"null"), 400, "invalid_push"),
    "device-id-list": (_device(b'["d1"]'), 400, "invalid_push"),
    "device-id-object": (_device(b'{"id": "d1"}'), 400, "invalid_push"),
    "device-id-bool": (_device(b"true"), 400, "invalid_push"),
    "device-id-empty": (_device(b'""'), 400, "invalid_push"),
    "device-id-too-long": (_device(json.dumps("d" * (MAX_ID_CHARS + 1)).encode()), 400, "invalid_push"),
    "device-id-control-char": (_device(b'"d\\u00001"'), 400, "invalid_push"),
    "device-id-newline": (_device(b'"d\\n1"'), 400, "invalid_push"),
    "device-id-missing": (b'{"message": "dummy message"}', 400, "invalid_push"),
    # message.
    "message-number": (_message(b"12"), 400, "invalid_push"),
    "message-float": (_message(b"1.5"), 400, "invalid_push"),
    "message-array": (_message(b'["a"]'), 400, "invalid_push"),
    "message-null": (_message(b"null"), 400, "invalid_push"),
    "message-bool": (_message(b"false"), 400, "invalid_push"),
    "messages-string": (body({"messages": "PushUrl"}), 400, "invalid_push"),
    "messages-object": (body({"messages": {"0": event(1)}}), 400, "invalid_push"),
    "messages-number": (body({"messages": 1}), 400, "invalid_push"),
    "chat-ended-string": (body(payload_message([event(1)]) | {"chatEnded": "yes"}), 400, "invalid_push"),
    "chat-id-object": (body(payload_message([event(1)]) | {"chatId": {"id": "s1"}}), 400, "invalid_push"),
    "chat-id-float": (body(payload_message([event(1)]) | {"chatId": 1.5}), 400, "invalid_push"),
    "message-user-data-string": (body(trigger_message(3) | {"userData": "x"}), 400, "invalid_push"),
    # Event members.
    "event-index-string": (event_with("index", b'"1"'), 400, "invalid_push"),
    "event-index-float": (event_with("index", b"1.5"), 400, "invalid_push"),
    "event-index-integral-float": (event_with("index", b"1.0"), 400, "invalid_push"),
    "event-index-negative": (event_with("index", b"-1"), 400, "invalid_push"),
    "event-index-2**40": (event_with("index", str(2**40).encode()), 400, "invalid_push"),
    "event-index-2**31": (event_with("index", str(2**31).encode()), 400, "invalid_push"),
    "event-index-bool": (event_with("index", b"true"), 400, "invalid_push"),
    "event-index-null": (event_with("index", b"null"), 400, "invalid_push"),
    "event-type-number": (_swap(VALID_PAYLOAD, b'"type": "Message"', b'"type": 5'), 400, "invalid_push"),
    "event-not-an-object": (body({"messages": ["PushUrl"]}), 400, "invalid_push"),
    "event-user-data-string": (
        body({"messages": [{"index": 1, "type": "PushUrl", "userData": "x"}]}),
        400,
        "invalid_push",
    ),
    # Trigger positions and attempts.
    "position-abc": (body(trigger_message("abc")), 400, "invalid_push"),
    "position-empty": (body(trigger_message("")), 400, "invalid_push"),
    "position-1.5": (body(trigger_message("1.5")), 400, "invalid_push"),
    "position-float-1.5": (trigger_with("notify-position", b"1.5"), 400, "invalid_push"),
    "position-minus-2": (body(trigger_message("-2")), 400, "invalid_push"),
    "position-99999999999": (body(trigger_message("99999999999")), 400, "invalid_push"),
    "position-2**31": (body(trigger_message(2**31)), 400, "invalid_push"),
    "position-null": (trigger_with("notify-position", b"null"), 400, "invalid_push"),
    "position-bool": (trigger_with("notify-position", b"true"), 400, "invalid_push"),
    "position-list": (trigger_with("notify-position", b"[3]"), 400, "invalid_push"),
    "position-missing": (
        body({"messages": [{"index": 1, "type": "PushUrl", "userData": {}}]}),
        400,
        "invalid_push",
    ),
    "attempt-minus-1": (body(trigger_message(3, attempt="-1")), 400, "invalid_push"),
    "attempt-abc": (body(trigger_message(3, attempt="abc")), 400, "invalid_push"),
    "attempt-2**40": (body(trigger_message(3, attempt=2**40)), 400, "invalid_push"),
}
OVERSIZE = [name for name, (_, status, _) in CORPUS.items() if status == 413]
