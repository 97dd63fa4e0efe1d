"""RQ entry points, named by dotted path (`workers.jobs.drain`) by the ingress and the scripts."""

from __future__ import annotations

from workers.context import get_context


def drain() -> int:
    """Refresh and deliver every dirty chat (see workers/drain.py)."""
    from workers.drain import drain as run_drain

    return run_drain(get_context())


def deliver_webhook(sink: int, session_id: str, delivery_id: str) -> str:
    """Send one webhook delivery; raising makes RQ retry it, then dead-letter it."""
    from workers.webhooks import deliver

    return deliver(get_context(), sink, session_id, delivery_id)
