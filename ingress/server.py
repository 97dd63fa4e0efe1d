"""Serve the ingress with uvicorn (uvloop + httptools): the one code path for every entry point."""

from __future__ import annotations

import logging
import os
from typing import Any

import uvicorn

from ingress.app import create_app
from ingress.auth import OPEN_PUSH_WARNING
from shared.errors import ConfigError
from shared.logs import configure_logging
from shared.redis_clients import check_ack_supported
from shared.settings import Settings, load_settings

# SIGTERM: stop accepting, let in-flight requests finish (each is a single Redis call).
GRACEFUL_SHUTDOWN_S = 10
log = logging.getLogger(__name__)


def check_push_token(settings: Settings) -> None:
    """GMS cannot sign its pushes: the URL token is their only proof of origin, so an ingress
    without one is refused unless the operator says it on purpose (then warned about at start-up).
    Checked where the process starts, not in create_app: tests build apps without a token."""
    if settings.push_token is None and not settings.allow_open_push:
        raise ConfigError(
            "PUSH_TOKEN is not set: POST /push would accept forged pushes from anyone; set PUSH_TOKEN "
            "(GMS customhttp.url ...?token=<it>) or ALLOW_OPEN_PUSH=true if only GMS can reach it"
        )
    if settings.push_token is None:
        log.warning(OPEN_PUSH_WARNING)


def app_from_environment() -> object:
    """App factory for multi-process serving: each uvicorn process builds its app from the environment."""
    settings = load_settings(os.environ)
    configure_logging(settings.log_level)
    return create_app(settings)


def uvicorn_options(host: str, port: int) -> dict[str, Any]:
    """How the ingress runs uvicorn; the benchmarks' baseline servers use the same, so only apps differ."""
    return {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "server_header": False,
        "date_header": False,
    }


def serve(settings: Settings, host: str = "0.0.0.0", port: int = 8080, processes: int = 1) -> None:
    """Serve in this process, or in `processes` uvicorn processes sharing the port (several GMS nodes)."""
    configure_logging(settings.log_level)
    check_ack_supported(settings)  # INGRESS_ACK=replicated+fsynced on a Redis without WAITAOF: refused
    check_push_token(settings)
    options = uvicorn_options(host, port)
    if processes > 1:
        uvicorn.run("ingress.server:app_from_environment", factory=True, workers=processes, **options)
    else:
        uvicorn.Server(uvicorn.Config(create_app(settings), **options)).run()
