"""Property: no body, however malformed, makes /push answer 5xx or raise."""

from __future__ import annotations

import json
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.pushes import trigger_message

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def _mutated_trigger(draw: Any) -> bytes:
    message = trigger_message(1)
    user_data = message["messages"][0]["userData"]
    user_data[draw(st.sampled_from(sorted(user_data)))] = draw(json_values)
    if draw(st.booleans()):
        message[draw(st.sampled_from(sorted(message)))] = draw(json_values)
    return json.dumps({"deviceId": draw(st.text(max_size=5)), "message": message}).encode()


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda d, m: json.dumps({"deviceId": d, "message": m}).encode(), json_values, json_values),
    st.composite(_mutated_trigger)(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=bodies)
def test_no_body_produces_a_server_error(
    client: TestClient, redis_client: redis.Redis, content: bytes
) -> None:
    reply = client.post("/push", content=content)
    assert reply.status_code in (200, 400), reply.text
    payload = reply.json()
    if reply.status_code == 400:
        assert set(payload) == {"error", "detail"}
