"""A claimed chat's state transitions: what a worker decided, applied in fenced Lua calls.

A worker hands every claim back in exactly one of two ways: a `Commit` (deliver events, advance the
cursor, settle alias, end and what is due next: commit.lua) or a `Release` (no delivery: retry later,
wait for a gap, park for credentials, suspect a stale alias, or drop: release.lua). Both are fenced by
the claim's lease token, so a worker whose lease expired changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.clock import now_ms
from shared.ids import IdSource
from shared.models import Event
from shared.scripts import Scripts
from shared.settings import Settings
from workers.claims import Claim


@dataclass
class Commit:
    """Deliver `events` (in index order) and move the chat's cursor to `cursor`."""

    cursor: int
    events: list[Event] = field(default_factory=list)
    alias: str = ""  # the alias the Refresh response gave ('' none)
    end_reason: str = ""  # the chat ends after these events ('' it goes on)
    drop_staged: list[int] = field(default_factory=list)  # payload events handled (delivered or late)
    again_at_ms: int | None = None  # due again then (a payload gap's wait), else done
    gap_since_ms: int | None = None  # when the gap at the new cursor was first seen


@dataclass(frozen=True)
class Release:
    """Give the chat back without delivering: 'retry', 'later', 'park', 'suspect' (with the alias the
    refused Refresh used) or 'drop' (see release.lua). Due again at `at_ms` where that applies."""

    how: str
    at_ms: int = 0
    alias: str = ""


Decision = Commit | Release


class Transitions:
    """Applies decisions for one worker process."""

    def __init__(self, scripts: Scripts, ids: IdSource, settings: Settings) -> None:
        self.scripts = scripts
        self.ids = ids
        self.chunk_events = settings.commit_chunk_events
        self.chunk_bytes = settings.commit_chunk_bytes

    def apply(self, claim: Claim, token: str, decision: Decision) -> bool:
        """False if our lease had expired (then another worker redoes the work)."""
        if isinstance(decision, Release):
            return self.release(claim, token, decision) != "fenced"
        return self.commit(claim, token, decision)

    def chunks(self, events: list[Event]) -> Iterator[list[Event]]:
        """At most `commit_chunk_events` events and about `commit_chunk_bytes` of JSON per chunk (one
        chunk, maybe empty, at least): a long chat registered late may bring 20,000 in one Refresh."""
        chunk: list[Event] = []
        size = 0
        for event in events:
            if chunk and (len(chunk) >= self.chunk_events or size + len(event.raw) > self.chunk_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(event)
            size += len(event.raw)
        yield chunk

    def commit(self, claim: Claim, token: str, commit: Commit) -> bool:
        """Deliver and advance in fenced transactions, one per chunk. False if our lease had expired
        (chunks committed before that stand: each moved the cursor past exactly what it delivered)."""
        chunks = list(self.chunks(commit.events))
        drops = sorted(commit.drop_staged)
        for number, chunk in enumerate(chunks):
            final = number == len(chunks) - 1
            cursor = commit.cursor if final else chunk[-1].index + 1
            dropped = drops if final else [i for i in drops if i < cursor]
            drops = [] if final else [i for i in drops if i >= cursor]
            rest: list[str | bytes | int] = []
            for event in chunk:
                rest += [event.index, event.type, bytes(event.raw)]
            rest += dropped
            done = self.scripts["commit"](
                rest,
                sid=claim.session_id,
                token=token,
                now_ms=now_ms(),
                device=claim.device_id or "",
                cursor=cursor,
                final=final,
                alias=commit.alias if final else "",
                end_reason=commit.end_reason if final else "",
                gen=claim.gen,
                again_at_ms=commit.again_at_ms if final else None,
                gap_since_ms=commit.gap_since_ms if final else None,
                id_base=self.ids.new("wh"),
                n_events=len(chunk),
            )
            if not done:
                return False
        return True

    def release(self, claim: Claim, token: str, release: Release) -> str:
        """What release.lua did: the `how` it applied, or 'fenced'."""
        result = self.scripts["release"](
            sid=claim.session_id,
            token=token,
            how=release.how,
            at_ms=release.at_ms,
            gen=claim.gen,
            now_ms=now_ms(),
            id_base=self.ids.new("wh"),
            alias=release.alias,
        )
        return result.decode() if isinstance(result, bytes) else str(result)
