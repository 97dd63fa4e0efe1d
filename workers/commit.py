"""The two ways a worker hands a chat back: commit (deliver + advance) or release (no delivery)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.models import Event
from workers.claims import Claim
from workers.context import WorkerContext
from workers.webhooks import WEBHOOK_KEYS_TTL_MS


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Outcome:
    """What processing a claim decided."""

    cursor: int
    events: list[Event] = field(default_factory=list)
    alias: str = ""
    end_reason: str = ""
    drop_staged: list[int] = field(default_factory=list)
    again_at_ms: int | None = None
    gap_since_ms: int | None = None


def commit(ctx: WorkerContext, claim: Claim, token: str, outcome: Outcome) -> bool:
    """Deliver and advance in one fenced transaction. False if our lease had expired."""
    settings = ctx.settings
    args: list[str | bytes] = [
        claim.session_id,
        token,
        str(now_ms()),
        claim.device_id or "",
        str(outcome.cursor),
        outcome.alias,
        outcome.end_reason,
        claim.gen,
        str(settings.session_idle_ttl_s * 1000),
        str(settings.ended_ttl_s * 1000),
        str(settings.stream_maxlen),
        str(settings.stream_ttl_s * 1000),
        str(len(settings.webhook_urls)),
        ctx.job_id("wh"),
        str(settings.webhook_batch_max),
        str(WEBHOOK_KEYS_TTL_MS),
        "" if outcome.again_at_ms is None else str(outcome.again_at_ms),
        "" if outcome.gap_since_ms is None else str(outcome.gap_since_ms),
        str(len(outcome.events)),
    ]
    for event in outcome.events:
        args += [str(event.index), event.type, bytes(event.raw)]
    args += [str(index) for index in outcome.drop_staged]
    return bool(ctx.scripts["commit"](args=args))


def release(ctx: WorkerContext, claim: Claim, token: str, how: str, at_ms: int = 0) -> str:
    """Give the chat back without delivering: 'retry', 'later' or 'park' (see release.lua)."""
    args = [claim.session_id, token, how, str(at_ms), claim.gen]
    result = ctx.scripts["release"](args=args)
    return result.decode() if isinstance(result, bytes) else str(result)
