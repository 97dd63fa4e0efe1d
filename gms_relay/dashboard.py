"""rq-dashboard over the relay's Redis, reading every job with RQ's JSON serializer, as the relay writes them.

rq-dashboard's `--json` switches its queue and job views to RQ's JSONSerializer, but (up to 0.9 at
least) its Workers views build each worker with `Worker.all(connection=...)`, that is with RQ's
default pickle serializer, and a busy worker's current job is then unpickled: the Workers page answers
500 for JSON jobs. The worker's own hash holds no serialized data, so no worker-side format fixes it,
and the relay never pickles anything. This launcher gives the dashboard a `Worker` whose lookups read
jobs as JSON, turns `--json` on, and then runs rq-dashboard's own command line unchanged (the same
options and `RQ_DASHBOARD_*` variables): `python -m gms_relay.dashboard --redis-url ... --port ...`.
"""

from __future__ import annotations

from typing import Any

from rq import Worker
from rq.serializers import JSONSerializer


class JSONWorker(Worker):
    """A worker as rq-dashboard reads it, with its current job read as JSON."""

    @classmethod
    def all(cls, *args: Any, **kwargs: Any) -> list[Any]:
        kwargs["serializer"] = kwargs.get("serializer") or JSONSerializer
        return super().all(*args, **kwargs)


def main() -> None:
    from rq_dashboard import cli, web

    # rq-dashboard looks both names up when it serves a page, so setting them here is enough.
    web.Worker = JSONWorker
    web.config.serializer = JSONSerializer  # what --json sets: queue, job list and job views
    cli.main()


if __name__ == "__main__":
    main()
