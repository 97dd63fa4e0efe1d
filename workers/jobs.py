"""RQ entry points, named by dotted path (`workers.jobs.drain`) by the ingress and the scripts."""

from __future__ import annotations

from workers.context import get_context


def drain() -> int:
    """Refresh and deliver every due chat (see workers/drain.py)."""
    from workers.drain import drain as run_drain

    return run_drain(get_context())


def deliver_webhook(sink: int, session_id: str, delivery_id: str) -> str:
    """Send a dead-lettered webhook delivery that an operator requeued; raising dead-letters it again."""
    from workers.dead_letters import deliver_requeued

    return deliver_requeued(get_context().webhooks, sink, session_id, delivery_id)
