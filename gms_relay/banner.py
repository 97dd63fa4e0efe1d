"""The banner `gms-relay up` prints once the stack is ready: where everything is, in one screen.

Everything an operator needs in their first minutes: where to point GMS, where to look (dashboard,
events, logs) and, for a demo, the secrets that were generated for it; the children's own output goes
to log files, so these lines stay on screen.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from redis.exceptions import RedisError

from shared import keys
from shared.redis_clients import describe, primary_url
from shared.settings import Settings


@dataclass(frozen=True)
class BannerInfo:
    ingress_url: str  # base URL, e.g. http://127.0.0.1:8080
    redis_url: str
    embedded_data_dir: Path | None  # where the embedded Redis keeps its data; None: REDIS_URL was given
    log_dir: Path
    log_names: list[str]
    workers: int
    dashboard_url: str | None = None
    status_interval_s: float = 0.0
    simulator: str | None = None  # what the simulator does, when it runs
    generated: dict[str, str] = field(default_factory=dict)  # demo secrets made up for this run
    redis_described: str | None = None  # with REDIS_SENTINELS: the Sentinels, and redis_url the primary
    push_token: str | None = None  # generated for this run: shown, GMS's customhttp.url needs it
    push_token_set: bool = True  # False: ALLOW_OPEN_PUSH=true, /push takes pushes from anyone


def banner_redis(settings: Settings) -> tuple[str, str | None]:
    """BannerInfo's `redis_url` and `redis_described`: with REDIS_SENTINELS, the primary they name now
    (the pasted commands go there: redis-cli cannot ask Sentinel) and the Sentinels, else REDIS_URL."""
    if not settings.redis_sentinels:
        return settings.redis_url, None
    try:
        url = primary_url(settings)
    except (RedisError, OSError):  # no Sentinel answers yet: the workers wait and say so in their logs
        url = settings.redis_url
    return url, describe(settings)


def _python() -> str:
    """`python` when that is this interpreter's (an activated venv), else this interpreter's full path:
    the one-liner needs redis-py, which another `python` on PATH may not have."""
    found = shutil.which("python")
    same_dir = found is not None and os.path.dirname(os.path.abspath(found)) == os.path.dirname(
        sys.executable
    )
    return "python" if same_dir else sys.executable


def read_events_commands(redis_url: str, sentinel: bool = False) -> tuple[str, str]:
    """Ready-to-paste commands that print the first entries of one device's event stream: redis-cli,
    and a Python one-liner for machines without redis-cli (the embedded Redis ships no client). With
    `sentinel`, `redis_url` is the primary's now: redis-cli goes there (its password from the shell's
    REDIS_URL, never printed), the one-liner asks the Sentinels as the relay does."""
    parts = urlsplit(redis_url)
    local = parts.hostname in ("127.0.0.1", "localhost") and not parts.password and parts.path in ("", "/0")
    pattern = shlex.quote(keys.stream("*"))
    auth = ""
    if sentinel:
        cli = f"redis-cli -h {parts.hostname} -p {parts.port or 6379} -n {parts.path.strip('/') or 0}"
        connect = "sync_client(load_settings(os.environ))"
        if parts.password:
            password = (
                'import os, urllib.parse; print(urllib.parse.urlsplit(os.environ["REDIS_URL"]).password)'
            )
            auth = f'export REDISCLI_AUTH="$({_python()} -c {shlex.quote(password)})"; '
    elif local:  # the embedded Redis, or one on this machine's default database
        cli, connect = f"redis-cli -p {parts.port or 6379}", f"redis.Redis(port={parts.port or 6379})"
    elif parts.password:  # never print a password: the operator's shell has REDIS_URL
        cli, connect = 'redis-cli -u "$REDIS_URL"', 'redis.Redis.from_url(os.environ["REDIS_URL"])'
    else:
        cli, connect = (
            f"redis-cli -u {shlex.quote(redis_url)}",
            f"redis.Redis.from_url({json.dumps(redis_url)})",
        )
    first = f"$({cli} --scan --pattern {pattern} | head -1)"
    redis_cli = f"{auth}{cli} XREAD COUNT 10 STREAMS {first} 0"
    imports = "from shared.redis_clients import sync_client; from shared.settings import load_settings; "
    code = (  # double quotes only, so that the shell quoting stays one pair of single quotes
        f"import os, redis; {imports if sentinel else ''}r = {connect}; "
        f"key = next(r.scan_iter({json.dumps(keys.stream('*'))})); "
        "print(key.decode()); [print(id.decode(), fields) for id, fields in r.xrange(key, count=10)]"
    )
    return redis_cli, f"{_python()} -c {shlex.quote(code)}"


def banner(info: BannerInfo) -> str:
    redis_cli, python = read_events_commands(info.redis_url, sentinel=info.redis_described is not None)
    if info.push_token:
        push = f"{info.ingress_url}/push?token={info.push_token}   "
        push += "(GMS customhttp.url; PUSH_TOKEN made up for this run"
    elif info.push_token_set:
        push = f"{info.ingress_url}/push?token=<PUSH_TOKEN>   (GMS customhttp.url; the token you set"
    else:
        push = f"{info.ingress_url}/push   (GMS customhttp.url; OPEN: ALLOW_OPEN_PUSH=true, no token"
    lines = [
        f"gms-relay: up, {info.workers} worker(s); Ctrl-C stops everything",
        f"  push URL   {push}; metrics at {info.ingress_url}/metrics)",
    ]
    if info.dashboard_url:
        lines.append(f"  dashboard  {info.dashboard_url}   (rq-dashboard: queues, workers, dead letters)")
    if info.redis_described:
        redis = f"{info.redis_described}, primary now at {_without_password(info.redis_url)}"
    elif info.embedded_data_dir:
        redis = f"embedded Redis at {info.redis_url} (data and append-only file in {info.embedded_data_dir})"
    else:
        redis = f"{_without_password(info.redis_url)} (REDIS_URL)"
    lines += [
        f"  Redis      {redis}",
        f"  events     Redis streams {keys.stream('<deviceId>')}; the first one's entries:",
        f"               {redis_cli}",
        f"             or without redis-cli: {python}",
        f"  logs       {info.log_dir}/ ({', '.join(info.log_names)})",
    ]
    if info.simulator:
        lines.append(f"  simulator  {info.simulator}")
    if info.generated:
        secrets = "  ".join(f"{name}={value}" for name, value in info.generated.items())
        lines.append(f"  demo       {secrets}   (generated for this run)")
    if info.status_interval_s > 0:
        lines.append(
            f"status every {info.status_interval_s:g} s: pushes answered 200, events delivered, "
            "backlog (dirty chats, queued jobs), dead letters"
        )
    return "\n".join(lines)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
