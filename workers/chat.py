"""Decide what one claimed chat needs, do it, and hand the chat back.

Reliable chats are refreshed from our cursor (never from notify-position, never with the message-level
secure key, always with the newest alias). Payload chats release their staged events in index order,
holding later events back for a bounded time while a gap fills.
"""

from __future__ import annotations

import logging
import random
import time

import msgspec

from shared.classify import PUSH_URL
from shared.gms import Credentials, RefreshVerdict
from shared.models import EVENT_HEAD_DECODER, Event
from workers.claims import Claim
from workers.commit import Outcome, commit, now_ms, release
from workers.context import WorkerContext

log = logging.getLogger("gms_relay.worker")

MAX_BACKOFF_MS = 2000
SLOW_RETRY_MS = 15000
# A multi-Chat-Server GMS refuses a stale alias with the same answer (HTTP 400 / statusCode 2) that
# reports an ended chat. So a refusal only suspects the end: the chat is tried again, at once with an
# alias GMS has not refused yet (one that arrived meanwhile, or another candidate seen since the last
# successful Refresh), else after this long (the trigger that carries the new alias is usually
# milliseconds behind) or as soon as the next push arrives. An alias refused a second time ends it.
SUSPECT_WAIT_MS = 250
# ... and this long when the attempt before failed on our side: that Refresh may have reached GMS
# and changed the alias in the answer we lost; only the chat's next trigger (app-dbid) can tell.
SUSPECT_WAIT_AFTER_LOSS_MS = SLOW_RETRY_MS


def process(ctx: WorkerContext, claim: Claim, token: str) -> None:
    """Handle one claim. Unexpected exceptions escape to RQ; the lease then simply expires."""
    if not claim.device_id:
        release(ctx, claim, token, "drop")  # forgotten or expired while it waited
        return
    if claim.end == "removed":
        # notify-position -1: the customer left. Never Refresh with -1, but fetch (from our cursor) what
        # the triggers that came before it announced; a failing Refresh is retried like any other
        # (Chat Server keeps resending those unacknowledged triggers), so nothing is dropped.
        if _has_credentials(claim):
            _refresh(ctx, claim, token, end_reason="removed")
        else:
            _commit(ctx, claim, token, Outcome(cursor=claim.cursor, end_reason="removed"))
    elif claim.payload_mode:
        _commit(ctx, claim, token, _release_staged(ctx, claim))
    else:
        _refresh(ctx, claim, token)


def _commit(ctx: WorkerContext, claim: Claim, token: str, outcome: Outcome) -> None:
    if commit(ctx, claim, token, outcome):
        if outcome.events:
            ctx.histograms.observe("trigger_to_stream", max(0.0, (now_ms() - claim.due_ms) / 1000))
        if outcome.end_reason:
            log.info("chat ended", extra={"session_id": claim.session_id, "reason": outcome.end_reason})
    else:
        log.warning(
            "lease expired before commit; another worker will redo it", extra={"session_id": claim.session_id}
        )


def _has_credentials(claim: Claim) -> bool:
    return bool(claim.fields.get("userId") and claim.fields.get("secureKey"))


def _refresh(ctx: WorkerContext, claim: Claim, token: str, end_reason: str = "") -> None:
    """Refresh from the cursor and commit what it returned; `end_reason` ends the chat afterwards."""
    fields = claim.fields
    user_id, secure_key = fields.get("userId", ""), fields.get("secureKey", "")
    if not _has_credentials(claim):
        # Triggers without a secure key (default flex-push-content), or credentials that expired
        # (SESSION_IDLE_TTL_S): wait for PUT /sessions, and say so once (chat.credentials_required).
        release(ctx, claim, token, "park")
        log.info("no credentials; waiting for PUT /sessions", extra={"session_id": claim.session_id})
        return
    position = max(claim.cursor, 1)
    creds = Credentials(user_id, secure_key, fields.get("alias", ""))
    service = fields.get("service") or ctx.settings.gms_chat_service
    started = time.perf_counter()
    result = ctx.gms.refresh(service, claim.session_id, creds, position)
    ctx.histograms.observe("refresh", time.perf_counter() - started, f'outcome="{result.verdict.value}"')
    if result.verdict is RefreshVerdict.RETRY:
        # Fast retries first, then a slow steady pace while GMS stays down (never given up).
        settings = ctx.settings
        if claim.retries < settings.refresh_retry_max:
            backoff = min(MAX_BACKOFF_MS, settings.refresh_retry_base_ms * 2**claim.retries)
        else:
            backoff = SLOW_RETRY_MS
        release(ctx, claim, token, "retry", now_ms() + int(backoff * random.uniform(0.5, 1.5)))
        log.warning(
            "refresh failed; will retry",
            extra={"session_id": claim.session_id, "reason": result.reason, "retries": claim.retries},
        )
        return
    if result.verdict is RefreshVerdict.FATAL:
        refused = fields.get("refused")
        if refused is None or creds.alias not in refused.split("\n"):
            wait = SUSPECT_WAIT_AFTER_LOSS_MS if claim.retries else SUSPECT_WAIT_MS
            release(ctx, claim, token, "suspect", now_ms() + wait, alias=creds.alias)
            log.warning(
                "refresh refused; the alias may be stale: trying again before ending the chat",
                extra={"session_id": claim.session_id, "reason": result.reason},
            )
            return
        _commit(ctx, claim, token, Outcome(cursor=position, end_reason=end_reason or "fatal"))
        return
    response = result.response
    assert response is not None
    events: list[Event] = []
    cursor = max(position, response.nextPosition or 0)
    for raw in response.messages:
        try:
            head = EVENT_HEAD_DECODER.decode(bytes(raw))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if head.index is None or head.index < position:
            continue
        cursor = max(cursor, head.index + 1)
        if head.type != PUSH_URL:
            events.append(Event(head.index, head.type or "", raw))
    events.sort(key=lambda e: e.index)
    alias = "" if response.alias is None else str(response.alias)
    if not end_reason and response.chatEnded:
        end_reason = "chatEnded"
    _commit(ctx, claim, token, Outcome(cursor=cursor, events=events, alias=alias, end_reason=end_reason))


def _release_staged(ctx: WorkerContext, claim: Claim) -> Outcome:
    """Events of payload pushes, in index order. A gap (a missing index with later ones staged) holds
    the later ones back until PAYLOAD_GAP_WAIT_MS after that gap, named by its first missing index,
    was first seen; then it is skipped (commit.lua records it, so that its events answer `late`)."""
    now, wait_ms = now_ms(), ctx.settings.payload_gap_wait_ms
    indexes = sorted(claim.staged)
    # Pushes of one session can arrive out of order (a GMS node failover): with no cursor yet, a first
    # staged index above 1 is a gap like any other (indexes start at 1), only index 1 starts at once.
    start = claim.cursor if claim.cursor > 0 else min([1, *indexes[:1]])
    # `gap_since` is when the gap at the cursor was first seen; `gaps` when each later one was.
    head_since = int(claim.fields.get("gap_since") or 0) or None
    later = dict(_gap_times(claim.fields.get("gaps", "")))
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
            since = (head_since if missing == start else None) or later.get(missing) or now
            if not gaps and now - since >= wait_ms:
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
    return Outcome(
        cursor=ready[-1] + 1 if ready else claim.cursor,
        events=[e for e in events if e.type != PUSH_URL],
        end_reason="chatEnded" if ended else "",
        drop_staged=stale + ready,
        again_at_ms=None if head is None else gaps[head] + wait_ms,
        gap_since_ms=None if head is None else gaps[head],
    )


def _gap_times(text: str) -> list[tuple[int, int]]:
    """`index:ms,index:ms` as written by commit.lua."""
    return [(int(a), int(b)) for a, _, b in (item.partition(":") for item in text.split(",") if item)]


def _staged_event(index: int, raw: bytes) -> Event:
    head = EVENT_HEAD_DECODER.decode(raw)
    return Event(index, head.type or "", msgspec.Raw(raw))
