"""rq-dashboard over the relay's Redis, reading every job with RQ's JSON serializer, as the relay writes them.

rq-dashboard's `--json` switches its queue and job views to RQ's JSONSerializer, but (up to 0.9 at
least) its Workers views build each worker with `Worker.all(connection=...)`, that is with RQ's
default pickle serializer, and a busy worker's current job is then unpickled: the Workers page answers
500 for JSON jobs. The worker's own hash holds no serialized data, so no worker-side format fixes it,
and the relay never pickles anything. This launcher gives the dashboard a `Worker` whose lookups read
jobs as JSON, turns `--json` on, and then runs rq-dashboard's own command line unchanged (the same
options and `RQ_DASHBOARD_*` variables): `python -m gms_relay.dashboard --redis-url ... --port ...`.

With REDIS_SENTINELS in its environment the dashboard connects as every relay process does
(shared/redis_clients.py: the relay's Sentinel variables, REDIS_URL's password and db, timeouts and
retries), so it follows the primary through a failover; its `--redis-url` is then only a label.
rq-dashboard's own `redis+sentinel://` URLs would need the same facts spelt a second way.
"""

from __future__ import annotations

import os
from typing import Any

from rq import Worker
from rq.serializers import JSONSerializer

from shared.redis_clients import sync_client
from shared.settings import Settings, load_settings


class JSONWorker(Worker):
    """A worker as rq-dashboard reads it, with its current job read as JSON."""

    @classmethod
    def all(cls, *args: Any, **kwargs: Any) -> list[Any]:
        kwargs["serializer"] = kwargs.get("serializer") or JSONSerializer
        return super().all(*args, **kwargs)


def sentinel_connect(settings: Settings) -> Any:
    """rq-dashboard's `from_url(url, ...) -> (sentinel, client)`, answering with the relay's client.
    rq-dashboard calls it for every page of an instance: one client serves them all."""
    client = sync_client(settings, socket_timeout=5, socket_connect_timeout=2)

    def connect(url: str, *args: Any, **kwargs: Any) -> tuple[None, Any]:
        return None, client

    return connect


def main() -> None:
    from rq_dashboard import cli, web

    # rq-dashboard looks these names up when it serves a page, so setting them here is enough.
    web.Worker = JSONWorker
    web.config.serializer = JSONSerializer  # what --json sets: queue, job list and job views
    settings = load_settings(os.environ)
    if settings.redis_sentinels:
        web.from_url = sentinel_connect(settings)
    cli.main()


if __name__ == "__main__":
    main()
