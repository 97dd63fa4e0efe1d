"""One claimed chat, start to finish: which decision applies to it, applied once.

A reliable chat is refreshed (workers/refresh.py); a payload chat releases its staged events
(workers/payload.py); either way the decision is handed back through workers/transitions.py.
"""

from __future__ import annotations

import logging

from shared.clock import now_ms
from workers.claims import Claim
from workers.context import WorkerContext
from workers.payload import release_staged
from workers.refresh import has_credentials
from workers.transitions import Commit, Decision, Release

log = logging.getLogger("gms_relay.worker")


def decide(ctx: WorkerContext, claim: Claim) -> Decision:
    """What this chat needs now."""
    if not claim.device_id:
        return Release("drop")  # forgotten or expired while it waited
    if claim.end == "removed":
        # notify-position -1: the customer left. Never Refresh with -1, but fetch (from our cursor) what
        # the triggers that came before it announced; a failing Refresh is retried like any other
        # (Chat Server keeps resending those unacknowledged triggers), so nothing is dropped.
        if has_credentials(claim):
            return ctx.refresher.refresh(claim, end_reason="removed")
        return Commit(cursor=claim.cursor, end_reason="removed")
    if claim.payload_mode:
        return release_staged(claim, now_ms(), ctx.settings.payload_gap_wait_ms)
    return ctx.refresher.refresh(claim)


def process(ctx: WorkerContext, claim: Claim, token: str) -> None:
    """Handle one claim. Unexpected exceptions escape to RQ; the lease then simply expires."""
    decision = decide(ctx, claim)
    applied = ctx.transitions.apply(claim, token, decision)
    if not isinstance(decision, Commit):
        return
    if not applied:
        log.warning(
            "lease expired before commit; another worker will redo it", extra={"session_id": claim.session_id}
        )
        return
    if decision.events:
        ctx.histograms.observe("trigger_to_stream", max(0.0, (now_ms() - claim.due_ms) / 1000))
    if decision.end_reason:
        log.info("chat ended", extra={"session_id": claim.session_id, "reason": decision.end_reason})
