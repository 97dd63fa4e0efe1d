"""The payload-mode decision: which staged events a chat can release now, in index order.

Payload pushes carry the events themselves, so no Refresh is needed, but they can arrive out of order
(a GMS node failover). A gap (a missing index with later ones staged) holds the later ones back until
PAYLOAD_GAP_WAIT_MS after that gap, named by its first missing index, was first seen; then it is
skipped (commit.lua records it, so that its events answer `late`).
"""

from __future__ import annotations

import logging

import msgspec

from shared.classify import PUSH_URL
from shared.models import EVENT_HEAD_DECODER, Event
from workers.claims import Claim
from workers.transitions import Commit

log = logging.getLogger("gms_relay.worker")


def release_staged(claim: Claim, now_ms: int, wait_ms: int) -> Commit:
    """What to commit for a payload chat at `now_ms`."""
    indexes = sorted(claim.staged)
    # With no cursor yet, a first staged index above 1 is a gap like any other (indexes start at 1):
    # only index 1 starts at once.
    start = claim.cursor if claim.cursor > 0 else min([1, *indexes[:1]])
    # `gap_since` is when the gap at the cursor was first seen; `gaps` when each later one was.
    head_since = int(claim.fields.get("gap_since") or 0) or None
    later = dict(gap_times(claim.fields.get("gaps", "")))
    stale = [i for i in indexes if i < start]
    if stale:
        # Staged while a commit skipped their gap (their push reached the ingress mid-pass).
        log.warning(
            "late payload events (staged after their gap was skipped): counted, not delivered",
            extra={"session_id": claim.session_id, "indexes": stale},
        )
    ready: list[int] = []
    gaps: dict[int, int] = {}  # first missing index -> first seen, for the gaps still waited for
    previous = start - 1
    for index in indexes[len(stale) :]:
        if index > previous + 1:
            missing = previous + 1
            since = (head_since if missing == start else None) or later.get(missing) or now_ms
            if not gaps and now_ms - since >= wait_ms:
                log.warning(
                    "payload gap not filled in time; skipped",
                    extra={
                        "session_id": claim.session_id,
                        "first_missing": missing,
                        "last_missing": index - 1,
                    },
                )
            else:
                gaps[missing] = since
        if not gaps:
            ready.append(index)
        previous = index
    head = min(gaps, default=None)
    events = [_staged_event(index, claim.staged[index]) for index in ready]
    ended = claim.end == "chatEnded" and not gaps
    return Commit(
        cursor=ready[-1] + 1 if ready else claim.cursor,
        events=[e for e in events if e.type != PUSH_URL],
        end_reason="chatEnded" if ended else "",
        drop_staged=stale + ready,
        again_at_ms=None if head is None else gaps[head] + wait_ms,
        gap_since_ms=None if head is None else gaps[head],
    )


def gap_times(text: str) -> list[tuple[int, int]]:
    """`index:ms,index:ms` as written by commit.lua."""
    return [(int(a), int(b)) for a, _, b in (item.partition(":") for item in text.split(",") if item)]


def _staged_event(index: int, raw: bytes) -> Event:
    head = EVENT_HEAD_DECODER.decode(raw)
    return Event(index, head.type or "", msgspec.Raw(raw))
