"""Hostile /push input (issue #7 item 2): every malformed body is refused with a 4xx and leaves Redis
untouched, `classify` never fails in any other way, and garbage does not slow valid traffic down."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import keys
from shared.classify import MAX_ID_CHARS, MAX_POSITION, classify
from shared.errors import InvalidJson, InvalidPush
from shared.models import Payload, Trigger, WakeUp
from shared.redis_server import RedisServer
from shared.settings import Settings
from tests.processes import relay_env, relay_processes
from tests.pushes import body, event, payload_message, trigger_message
from tests.security.conftest import ClientFactory

LIMIT = Settings().push_max_bytes  # the default PUSH_MAX_BYTES, 65536
DEEP_ARRAY = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
VALID_TRIGGER = body(trigger_message(3))
VALID_PAYLOAD = body(payload_message([event(1, text="TEXT", x_sim="X")]))


def _swap(base: bytes, old: bytes, new: bytes) -> bytes:
    """`base` with its one occurrence of `old` replaced by raw bytes `new` (which may be invalid JSON)."""
    assert base.count(old) == 1, old
    return base.replace(old, new)


def _trigger_with(member: str, raw: bytes) -> bytes:
    """A valid trigger (position 3, attempt 4) whose userData member `member` holds the raw JSON `raw`."""
    name = json.dumps(member).encode() + b": "
    current = {"notify-position": b'"3"', "notify-attempt": b'"4"'}[member]
    return _swap(body(trigger_message(3, attempt=4)), name + current, name + raw)


def _event_with(member: str, raw: bytes) -> bytes:
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


def _wakeup_of_size(size: int) -> bytes:
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
    "invalid-utf8-in-event-text": (_event_with("text", b'"caf\xe9"'), 400, "invalid_json"),
    "invalid-utf8-in-unknown-event-member": (_event_with("x_sim", b'"\xff\xfe"'), 400, "invalid_json"),
    "invalid-utf8-in-message-secure-key": (
        _swap(VALID_TRIGGER, b'"COMETD-ONLY-KEY"', b'"\xfe\xff"'),
        400,
        "invalid_json",
    ),
    # NaN and Infinity are not JSON.
    "nan-event-index": (_event_with("index", b"NaN"), 400, "invalid_json"),
    "nan-in-unknown-member": (_event_with("x_sim", b"NaN"), 400, "invalid_json"),
    "infinity-position": (_trigger_with("notify-position", b"Infinity"), 400, "invalid_json"),
    "minus-infinity-attempt": (_trigger_with("notify-attempt", b"-Infinity"), 400, "invalid_json"),
    "float-overflow-position": (_trigger_with("notify-position", b"1e400"), 400, "invalid_push"),
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
    "deep-array-in-event": (_event_with("x_sim", DEEP_ARRAY), 400, "invalid_json"),
    "deep-object-in-event": (_event_with("x_sim", DEEP_OBJECT), 400, "invalid_json"),
    "deep-array-in-user-data": (_trigger_with("notify-attempt", DEEP_ARRAY), 400, "invalid_json"),
    # Huge strings and arrays.
    "device-id-just-under-limit": (
        _sized(lambda n: json.dumps({"deviceId": "d" * n, "message": "x"}).encode(), LIMIT - 1),
        400,
        "invalid_push",
    ),
    "message-just-over-limit": (_wakeup_of_size(LIMIT + 1), 413, "payload_too_large"),
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
        _trigger_with("notify-position", b"[" + b"1," * 20_000 + b"1]"),
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
    "event-index-string": (_event_with("index", b'"1"'), 400, "invalid_push"),
    "event-index-float": (_event_with("index", b"1.5"), 400, "invalid_push"),
    "event-index-integral-float": (_event_with("index", b"1.0"), 400, "invalid_push"),
    "event-index-negative": (_event_with("index", b"-1"), 400, "invalid_push"),
    "event-index-2**40": (_event_with("index", str(2**40).encode()), 400, "invalid_push"),
    "event-index-2**31": (_event_with("index", str(2**31).encode()), 400, "invalid_push"),
    "event-index-bool": (_event_with("index", b"true"), 400, "invalid_push"),
    "event-index-null": (_event_with("index", b"null"), 400, "invalid_push"),
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
    "position-float-1.5": (_trigger_with("notify-position", b"1.5"), 400, "invalid_push"),
    "position-minus-2": (body(trigger_message("-2")), 400, "invalid_push"),
    "position-99999999999": (body(trigger_message("99999999999")), 400, "invalid_push"),
    "position-2**31": (body(trigger_message(2**31)), 400, "invalid_push"),
    "position-null": (_trigger_with("notify-position", b"null"), 400, "invalid_push"),
    "position-bool": (_trigger_with("notify-position", b"true"), 400, "invalid_push"),
    "position-list": (_trigger_with("notify-position", b"[3]"), 400, "invalid_push"),
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


@pytest.mark.parametrize(
    ("content", "status", "code"), [pytest.param(*case, id=name) for name, case in CORPUS.items()]
)
def test_bad_push_is_refused_and_nothing_is_stored(
    make_client: ClientFactory, redis_client: redis.Redis, content: bytes, status: int, code: str
) -> None:
    client = make_client()
    reply = client.post("/push", content=content)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"] == code, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert set(reply.json()) == {"error", "detail"} and reply.json()["detail"]
    assert redis_client.dbsize() == 0, sorted(redis_client.keys("*"))


@pytest.mark.parametrize("name", OVERSIZE)
def test_oversize_body_without_content_length_is_413(
    make_client: ClientFactory, redis_client: redis.Redis, name: str
) -> None:
    content = CORPUS[name][0]

    def chunks() -> Iterator[bytes]:  # chunked transfer: the limit is enforced while reading
        for start in range(0, len(content), 8192):
            yield content[start : start + 8192]

    reply = make_client().post("/push", content=chunks())
    assert reply.status_code == 413
    assert reply.json()["error"] == "payload_too_large"
    assert redis_client.dbsize() == 0


def test_a_body_of_exactly_the_limit_is_accepted(
    make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    client = make_client()
    assert client.post("/push", content=_wakeup_of_size(LIMIT)).json() == {"status": "wakeup"}
    assert client.post("/push", content=_wakeup_of_size(LIMIT + 1)).status_code == 413
    assert redis_client.llen(keys.WAKEUPS) == 1


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_wrong_method_is_json_405(make_client: ClientFactory, redis_client: redis.Redis, method: str) -> None:
    reply = make_client().request(method, "/push", content=VALID_TRIGGER)
    assert reply.status_code == 405
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["allow"] == "POST"
    assert reply.json()["error"] == "method_not_allowed"
    assert redis_client.dbsize() == 0


def test_duplicate_members_keep_the_last_occurrence(
    make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    """msgspec, like Python's json module, keeps the last of duplicate members: a body whose every
    occurrence is valid is accepted (200) and acted on with the last value; an invalid occurrence
    anywhere is refused (400), whichever comes last. The same body always gets the same answer."""
    client = make_client()
    device_twice = b'{"deviceId": "first", "deviceId": "last", "message": "dummy message"}'
    assert [client.post("/push", content=device_twice).status_code for _ in range(3)] == [200] * 3
    stored = [json.loads(w) for w in redis_client.lrange(keys.WAKEUPS, 0, -1)]
    assert {w["deviceId"] for w in stored} == {"last"}
    # Inside the trigger's userData (a dict): the last notify-position is the one acted on.
    position_twice = _trigger_with("notify-position", b'"abc", "notify-position": "8"')
    assert client.post("/push", content=position_twice).json() == {"status": "queued"}
    redis_client.hset(keys.session("s1"), "cursor", 9)
    assert client.post("/push", content=position_twice).json() == {"status": "covered"}  # 8 < 9
    redis_client.flushall()
    for content in (
        b'{"deviceId": 5, "deviceId": "last", "message": "x"}',
        b'{"deviceId": "first", "deviceId": 5, "message": "x"}',
        _trigger_with("notify-position", b'"8", "notify-position": "abc"'),
    ):
        assert [client.post("/push", content=content).status_code for _ in range(2)] == [400, 400]
    assert redis_client.dbsize() == 0


# classify, fuzzed directly ------------------------------------------------------------------------

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
    content = _event_with(member, b'"' + raw + b'"')
    try:
        note = classify(content)
    except InvalidJson:
        return
    assert isinstance(note, Payload)
    for item in note.events:
        bytes(item.raw).decode("utf-8")  # raises UnicodeDecodeError for what no JSON reader accepts


# Garbage does not slow valid traffic down -----------------------------------------------------------

ROUNDS, PER_ROUND = 3, 100


def _refused(content: bytes) -> bool:
    try:
        classify(content)
    except (InvalidJson, InvalidPush):
        return True
    return False


def test_valid_traffic_interleaved_with_garbage_keeps_its_latency(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """p50 reply time of valid triggers, alone vs. each followed by a garbage body on the same
    keep-alive connection. Rounds alternate so that background load affects both samples alike."""
    # Bodies the relay refuses (this test is about their cost, not about which ones it refuses).
    garbage = [content for content, status, _ in CORPUS.values() if status == 413 or _refused(content)]
    alone: list[float] = []
    mixed: list[float] = []
    with (
        relay_processes(relay_env(REDIS_URL=redis_server.url), workers=0) as relay,
        httpx.Client(base_url=relay.base_url, timeout=10.0) as http,
    ):

        def valid(session: str) -> float:
            content = body(trigger_message(1, session_id=session), device_id=f"dev-{session}")
            started = time.perf_counter()
            reply = http.post("/push", content=content)
            elapsed = time.perf_counter() - started
            assert reply.json() == {"status": "queued"}, reply.text
            return elapsed

        for i in range(PER_ROUND):  # warm-up: connection, script cache, allocator
            valid(f"warm-{i}")
        for round_ in range(ROUNDS):
            alone += [valid(f"alone-{round_}-{i}") for i in range(PER_ROUND)]
            for i in range(PER_ROUND):
                mixed.append(valid(f"mixed-{round_}-{i}"))
                refused = http.post("/push", content=garbage[(round_ * PER_ROUND + i) % len(garbage)])
                assert 400 <= refused.status_code < 500, refused.text
    p50_alone, p50_mixed = statistics.median(alone), statistics.median(mixed)
    assert p50_mixed < 3 * p50_alone, (
        f"p50 alone {p50_alone * 1e3:.3f} ms, with garbage {p50_mixed * 1e3:.3f} ms"
    )
    # Every valid trigger was stored (one chat each); no garbage was.
    chats = sum(1 for _ in redis_client.scan_iter(keys.session("*"), count=1000))
    assert chats == PER_ROUND * (1 + 2 * ROUNDS)
