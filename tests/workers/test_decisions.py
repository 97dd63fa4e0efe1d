"""The worker's decisions as plain functions (workers/refresh.py, workers/payload.py): what a claim and
a Refresh result, or a claim's staged events, mean for the chat, without Redis or HTTP."""

from __future__ import annotations

import json

import msgspec

from shared.clock import now_ms
from shared.gms import RefreshResult, RefreshVerdict
from shared.models import ChatResponse
from shared.settings import Settings
from workers.claims import Claim
from workers.payload import release_staged
from workers.refresh import decide
from workers.transitions import Commit, Release

SETTINGS = Settings(refresh_retry_max=3, refresh_retry_base_ms=100, refresh_retry_cap_ms=300)
NOW = 1_700_000_000_000


def claim(staged: dict[int, bytes] | None = None, **fields: str) -> Claim:
    return Claim("s1", NOW, {"deviceId": "d1", **fields}, staged or {})


def raw(index: int, kind: str = "Message") -> msgspec.Raw:
    return msgspec.Raw(json.dumps({"index": index, "type": kind}).encode())


def ok(*messages: msgspec.Raw, next_position: int | None = None, **kw: object) -> RefreshResult:
    response = ChatResponse(messages=list(messages), nextPosition=next_position, **kw)  # type: ignore[arg-type]
    return RefreshResult(RefreshVerdict.OK, response, "")


RETRY = RefreshResult(RefreshVerdict.RETRY, None, "HTTP 503")
FATAL = RefreshResult(RefreshVerdict.FATAL, None, "statusCode 2")


def test_failing_refreshes_back_off_to_the_cap_then_retry_slowly_forever() -> None:
    waits = []
    for retries in range(6):
        decision = decide(claim(retries=str(retries)), RETRY, 1, "a", "", SETTINGS)
        assert isinstance(decision, Release) and decision.how == "retry"
        waits.append(decision.at_ms)
    # Jitter is +-50%: compare against each step's bounds, measured from now.
    now = now_ms()
    for retries, at in enumerate(waits):
        base = SETTINGS.refresh_slow_retry_ms if retries >= 3 else min(300, 100 * 2**retries)
        assert now - 1000 + base * 0.5 <= at <= now + base * 1.5


def test_a_first_refusal_suspects_the_alias_and_a_second_ends_the_chat() -> None:
    first = decide(claim(retries="0"), FATAL, 4, "a1", "", SETTINGS)
    assert isinstance(first, Release) and (first.how, first.alias) == ("suspect", "a1")
    after_loss = decide(claim(retries="2"), FATAL, 4, "a1", "", SETTINGS)
    assert isinstance(after_loss, Release)
    # After an attempt lost on our side the wait is the slow one (only the next trigger can tell).
    assert (
        after_loss.at_ms - first.at_ms > SETTINGS.refresh_slow_retry_ms - 2 * SETTINGS.refused_alias_wait_ms
    )
    second = decide(claim(refused="a0\na1"), FATAL, 4, "a1", "", SETTINGS)
    assert second == Commit(cursor=4, end_reason="fatal")
    assert decide(claim(refused="a1"), FATAL, 4, "a1", "removed", SETTINGS) == Commit(4, end_reason="removed")


def test_an_answer_commits_its_events_in_index_order_without_push_urls_or_old_ones() -> None:
    result = ok(raw(6), raw(3, "PushUrl"), raw(2), raw(5), raw(1), next_position=7, alias=117)
    decision = decide(claim(), result, 2, "a", "", SETTINGS)
    assert isinstance(decision, Commit)
    assert [e.index for e in decision.events] == [2, 5, 6]  # 1 is below the cursor, 3 a PushUrl
    assert (decision.cursor, decision.alias, decision.end_reason) == (7, "117", "")


def test_the_cursor_passes_every_index_seen_and_chat_ended_ends_the_chat() -> None:
    decision = decide(claim(), ok(raw(9), next_position=4, chatEnded=True), 1, "a", "", SETTINGS)
    assert isinstance(decision, Commit) and (decision.cursor, decision.end_reason) == (10, "chatEnded")
    undecodable = msgspec.Raw(b"{not json")
    empty = decide(claim(), ok(undecodable), 3, "a", "removed", SETTINGS)
    assert empty == Commit(cursor=3, alias="", end_reason="removed")


def staged(*indexes: int) -> dict[int, bytes]:
    return {i: json.dumps({"index": i, "type": "Message"}).encode() for i in indexes}


def test_payload_events_are_released_in_order_up_to_the_first_gap() -> None:
    decision = release_staged(claim(staged(1, 2, 4), cursor="0"), NOW, 2000)
    assert [e.index for e in decision.events] == [1, 2]
    assert (decision.cursor, decision.drop_staged) == (3, [1, 2])
    assert (decision.gap_since_ms, decision.again_at_ms) == (NOW, NOW + 2000)


def test_a_gap_is_skipped_once_its_wait_is_over_counted_from_when_it_was_first_seen() -> None:
    chat = claim(staged(4, 5), cursor="3", gap_since=str(NOW - 2500))
    decision = release_staged(chat, NOW, 2000)
    assert [e.index for e in decision.events] == [4, 5]
    # Not over yet: 1.5 s of the 2 s wait have passed.
    waiting = release_staged(claim(staged(5), cursor="3", gap_since=str(NOW - 1500)), NOW, 2000)
    assert waiting.events == [] and waiting.again_at_ms == NOW + 500


def test_with_no_cursor_a_first_index_above_one_waits_and_a_late_one_is_dropped() -> None:
    assert release_staged(claim(staged(2), cursor="0"), NOW, 2000).events == []
    late = release_staged(claim(staged(2, 5), cursor="5"), NOW, 2000)
    assert [e.index for e in late.events] == [5] and late.drop_staged == [2, 5]


def test_a_payload_chat_ends_only_once_no_gap_is_waited_for() -> None:
    assert release_staged(claim(staged(1), cursor="0", end="chatEnded"), NOW, 2000).end_reason == "chatEnded"
    held = release_staged(claim(staged(1, 3), cursor="0", end="chatEnded"), NOW, 2000)
    assert held.end_reason == "" and held.cursor == 2
