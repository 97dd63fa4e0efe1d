"""Every script refuses malformed and non-finite arguments before it writes anything."""

from __future__ import annotations

import pytest
import redis

from tests.shared.scripts_relay import (
    DEVICE,
    SINK,
    Relay,
    RelayFactory,
    assert_unchanged,
    chat_with_events,
    event,
    snapshot,
)

# ingest: malformed arguments -----------------------------------------------------------------------

_T = [DEVICE, "s1", "1700000000000", "job-x", "3", "0", "u", "k", "a"]
_P = [DEVICE, "s1", "1700000000000", "job-x", "", ""]
_W = [DEVICE, "1700000000000", "job-x", '{"deviceId":"dev-1"}']
MALFORMED_INGEST = {
    "trigger-too-few": ("ingest_trigger", _T[:-1]),
    "trigger-too-many": ("ingest_trigger", [*_T, "x"]),
    "trigger-position-not-a-number": ("ingest_trigger", [*_T[:4], "three", *_T[5:]]),
    "trigger-position-empty": ("ingest_trigger", [*_T[:4], "", *_T[5:]]),
    "trigger-attempt-not-a-number": ("ingest_trigger", [*_T[:5], "zero", *_T[6:]]),
    "now-not-a-number": ("ingest_trigger", [*_T[:2], "soon", *_T[3:]]),
    "device-empty": ("ingest_trigger", ["", *_T[1:]]),
    "job-id-empty": ("ingest_trigger", [*_T[:3], "", *_T[4:]]),
    "payload-too-few": ("ingest_payload", _P[:-1]),
    "payload-odd-pairs": ("ingest_payload", [*_P, "1"]),
    "payload-index-not-a-number": ("ingest_payload", [*_P, "1", "{}", "two", "{}"]),
    "payload-ended-not-a-flag": ("ingest_payload", [*_P[:4], "yes", _P[5]]),
    "wakeup-too-many": ("ingest_wakeup", [*_W, "x"]),
    "wakeup-too-few": ("ingest_wakeup", _W[:-1]),
}


@pytest.mark.parametrize("script, args", MALFORMED_INGEST.values(), ids=MALFORMED_INGEST.keys())
def test_malformed_ingest_is_refused_and_writes_nothing(relay: Relay, script: str, args: list[str]) -> None:
    relay.trigger("s1", 1)
    relay.payload("s2", [event(1)])
    before = snapshot(relay.redis)
    with pytest.raises(redis.ResponseError, match=f"gms-relay {script}: malformed arguments"):
        relay.run(script, args)
    assert_unchanged(before, snapshot(relay.redis))


MALFORMED_OTHERS = {
    "register-too-few": ("register", ["s1", DEVICE, "u", "k", "", "", "1700000000000"]),
    "register-now": ("register", ["s1", DEVICE, "u", "k", "", "", "later", "job"]),
    "register-no-sid": ("register", ["", DEVICE, "u", "k", "", "", "1700000000000", "job"]),
    "forget-two": ("forget", ["s1", "s2"]),
    "forget-empty": ("forget", [""]),
    "kick-now": ("kick", ["job", "x"]),
    "claim-max": ("claim", ["1700000000000", "tok", "many", "wk"]),
    "claim-token": ("claim", ["1700000000000", "", "16", "wk"]),
    "commit-index": (
        "commit",
        ["s1", "tok-a", "1", DEVICE, "2", "1", "", "", "1", "", "", "wh", "1", "one", "Message", "{}"],
    ),
    "commit-short": ("commit", ["s1", "tok-a", "1", DEVICE, "2", "1", "", "", "1", "", "", "wh", "2"]),
    "commit-drop": ("commit", ["s1", "tok-a", "1", DEVICE, "2", "1", "", "", "1", "", "", "wh", "0", "x"]),
    "commit-again-at": ("commit", ["s1", "tok-a", "1", DEVICE, "2", "1", "", "", "1", "soon", "", "wh", "0"]),
    "commit-no-device": ("commit", ["s1", "tok-a", "1", "", "2", "1", "", "", "1", "", "", "wh", "0"]),
    "release-how": ("release", ["s1", "tok-a", "maybe", "0", "1", "1700000000000", "wh", ""]),
    "release-at": ("release", ["s1", "tok-a", "retry", "soon", "1", "1700000000000", "wh", ""]),
    "take-capacity": ("take_deliveries", ["1700000000000", "1000", "tok", "many"]),
    "done-now": ("delivery_done", ["d-1", "d-2", "now"]),
    "failed-retry-at": ("delivery_failed", ["d-1", "tok", "1700000000000", "soon", ""]),
}


@pytest.mark.parametrize("script, args", MALFORMED_OTHERS.values(), ids=MALFORMED_OTHERS.keys())
def test_every_script_refuses_malformed_arguments_before_writing(
    make_relay: RelayFactory, script: str, args: list[str]
) -> None:
    relay = make_relay(**SINK)
    chat_with_events(relay)  # s1 claimed by tok-a, with a delivery in flight
    before = snapshot(relay.redis)
    with pytest.raises(redis.ResponseError, match=f"gms-relay {script}: malformed arguments"):
        relay.run(script, args)
    assert_unchanged(before, snapshot(relay.redis))


NON_FINITE = {
    "ingest-now-nan": ("ingest_trigger", "now", "nan"),
    "ingest-position-nan": ("ingest_trigger", "position", "nan"),
    "ingest-position-inf": ("ingest_trigger", "position", "inf"),
    "commit-now-nan": ("commit", "now", "nan"),
    "release-at-nan": ("release", "at", "nan"),
}


@pytest.mark.parametrize("script, field, value", NON_FINITE.values(), ids=NON_FINITE.keys())
def test_non_finite_numbers_are_refused_and_write_nothing(
    relay: Relay, script: str, field: str, value: str
) -> None:
    relay.trigger("s1", 1)
    claim = relay.claim_one("s1")
    relay.trigger("s2", 1, app_dbid="a2")
    args: list[str | bytes | int]
    if script == "ingest_trigger":
        args = relay.trigger_args(
            "s2", value if field == "position" else 2, now=value if field == "now" else None
        )
    elif script == "commit":
        args = relay.commit_args(claim, "tok-a", 2, [event(1)], final=False, now=value)
    else:
        args = relay.release_args(claim, "tok-a", "retry", value)
    before = snapshot(relay.redis)
    try:
        relay.run(script, args)
        refused = ""
    except redis.ResponseError as exc:
        refused = str(exc)
    assert_unchanged(before, snapshot(relay.redis))  # first, so a partial write is what fails
    assert f"gms-relay {script}: malformed arguments" in refused
