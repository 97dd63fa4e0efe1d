"""RQ's own command line, connected as the relay's processes are: `rq worker -c workers.rq_config ...`.

Without `-c`, RQ's command line connects to REDIS_URL from the environment, which with REDIS_SENTINELS
names no server (only its password and db apply). This settings module gives RQ the relay's Redis
instead: REDIS_URL, or RQ's SENTINEL setting built from the relay's variables, with the connection
class, retries and keepalives of `gms-relay worker`, so RQ's connection follows a failover too. RQ
reads a settings module's upper-case names at import, so this one reads the environment then; only
RQ's command line imports it.
"""

from __future__ import annotations

import os

from shared.redis_clients import rq_settings
from shared.settings import load_settings

globals().update(rq_settings(load_settings(os.environ)))
