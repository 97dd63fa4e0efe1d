"""The two ways a worker hands a chat back: commit (deliver + advance) or release (no delivery)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.models import Event
from shared.scripts import COMMIT_CHUNK_EVENTS
from workers.claims import Claim
from workers.context import WorkerContext

# A commit call carries at most COMMIT_CHUNK_EVENTS events (the script refuses more) and about this many
# bytes of event JSON. A bigger outcome (a long chat registered late: 20,000 events in one Refresh) is
# committed in chunks, each atomic.
CHUNK_EVENTS = COMMIT_CHUNK_EVENTS
CHUNK_BYTES = 1 << 20


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


def _chunks(events: list[Event]) -> Iterator[list[Event]]:
    chunk: list[Event] = []
    size = 0
    for event in events:
        if chunk and (len(chunk) >= CHUNK_EVENTS or size + len(event.raw) > CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(event)
        size += len(event.raw)
    yield chunk


def commit(ctx: WorkerContext, claim: Claim, token: str, outcome: Outcome) -> bool:
    """Deliver and advance in fenced transactions, one per chunk. False if our lease had expired
    (chunks committed before that stand: each moved the cursor past exactly what it delivered)."""
    chunks = list(_chunks(outcome.events))
    drops = sorted(outcome.drop_staged)
    for number, chunk in enumerate(chunks):
        final = number == len(chunks) - 1
        cursor = outcome.cursor if final else chunk[-1].index + 1
        dropped = drops if final else [i for i in drops if i < cursor]
        drops = [] if final else [i for i in drops if i >= cursor]
        args: list[str | bytes] = [
            claim.session_id,
            token,
            str(now_ms()),
            claim.device_id or "",
            str(cursor),
            "1" if final else "",
            outcome.alias if final else "",
            outcome.end_reason if final else "",
            claim.gen,
            "" if outcome.again_at_ms is None or not final else str(outcome.again_at_ms),
            "" if outcome.gap_since_ms is None or not final else str(outcome.gap_since_ms),
            ctx.job_id("wh"),
            str(len(chunk)),
        ]
        for event in chunk:
            args += [str(event.index), event.type, bytes(event.raw)]
        args += [str(index) for index in dropped]
        if not ctx.scripts["commit"](args=args):
            return False
    return True


def release(ctx: WorkerContext, claim: Claim, token: str, how: str, at_ms: int = 0, alias: str = "") -> str:
    """Give the chat back without delivering: 'retry', 'later', 'park', 'suspect' (with the alias the
    refused Refresh used) or 'drop' (see release.lua)."""
    args = [claim.session_id, token, how, str(at_ms), claim.gen, str(now_ms()), ctx.job_id("wh"), alias]
    result = ctx.scripts["release"](args=args)
    return result.decode() if isinstance(result, bytes) else str(result)
