"""The Refresh decision: call the GMS Chat API v2 Refresh for a reliable chat and decide what follows.

Always from our cursor (never from notify-position, never with the message-level secure key), always
with the newest alias. A failing Refresh is retried (fast, then at a slow steady pace: never given
up); a refusal (HTTP 400 / statusCode 2) only suspects the chat's end until the alias it used is
refused a second time; an answer becomes a commit of the events it returned, in index order.
"""

from __future__ import annotations

import logging
import random
import time

import msgspec

from shared.classify import PUSH_URL
from shared.clock import now_ms
from shared.gms import ChatApi, Credentials, RefreshResult, RefreshVerdict
from shared.metrics import Histograms
from shared.models import EVENT_HEAD_DECODER, Event
from shared.settings import Settings
from workers.claims import Claim
from workers.transitions import Commit, Decision, Release

log = logging.getLogger("gms_relay.worker")


def has_credentials(claim: Claim) -> bool:
    return bool(claim.fields.get("userId") and claim.fields.get("secureKey"))


class Refresher:
    """Refreshes claimed chats for one worker process."""

    def __init__(self, gms: ChatApi, settings: Settings, histograms: Histograms) -> None:
        self.gms = gms
        self.settings = settings
        self.histograms = histograms

    def refresh(self, claim: Claim, end_reason: str = "") -> Decision:
        """Refresh from the cursor; `end_reason` ends the chat after what the Refresh returned."""
        fields = claim.fields
        if not has_credentials(claim):
            # Triggers without a secure key (default flex-push-content), or credentials that expired
            # (SESSION_IDLE_TTL_S): wait for PUT /sessions, and say so once (chat.credentials_required).
            log.info("no credentials; waiting for PUT /sessions", extra={"session_id": claim.session_id})
            return Release("park")
        position = max(claim.cursor, 1)
        creds = Credentials(fields["userId"], fields["secureKey"], fields.get("alias", ""))
        service = fields.get("service") or self.settings.gms_chat_service
        started = time.perf_counter()
        result = self.gms.refresh(service, claim.session_id, creds, position)
        elapsed = time.perf_counter() - started
        self.histograms.observe("refresh", elapsed, f'outcome="{result.verdict.value}"')
        return decide(claim, result, position, creds.alias, end_reason, self.settings)


def decide(
    claim: Claim, result: RefreshResult, position: int, alias: str, end_reason: str, settings: Settings
) -> Decision:
    """What a Refresh from `position` with `alias` that got `result` means for the chat."""
    if result.verdict is RefreshVerdict.RETRY:
        # Fast retries first, then a slow steady pace while GMS stays down (never given up).
        if claim.retries < settings.refresh_retry_max:
            backoff = min(settings.refresh_retry_cap_ms, settings.refresh_retry_base_ms * 2**claim.retries)
        else:
            backoff = settings.refresh_slow_retry_ms
        log.warning(
            "refresh failed; will retry",
            extra={"session_id": claim.session_id, "reason": result.reason, "retries": claim.retries},
        )
        return Release("retry", now_ms() + int(backoff * random.uniform(0.5, 1.5)))
    if result.verdict is RefreshVerdict.FATAL:
        refused = claim.fields.get("refused")
        if refused is None or alias not in refused.split("\n"):
            # The attempt before failed on our side: that Refresh may have changed the alias in the
            # answer we lost, and only the chat's next trigger (app-dbid) can tell.
            wait = settings.refresh_slow_retry_ms if claim.retries else settings.refused_alias_wait_ms
            log.warning(
                "refresh refused; the alias may be stale: trying again before ending the chat",
                extra={"session_id": claim.session_id, "reason": result.reason},
            )
            return Release("suspect", now_ms() + wait, alias=alias)
        return Commit(cursor=position, end_reason=end_reason or "fatal")
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
    new_alias = "" if response.alias is None else str(response.alias)
    if not end_reason and response.chatEnded:
        end_reason = "chatEnded"
    return Commit(cursor=cursor, events=events, alias=new_alias, end_reason=end_reason)
