"""Serve the ingress with uvicorn (uvloop + httptools): the one code path for every entry point."""

from __future__ import annotations

import os
from typing import Any

import uvicorn

from ingress.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings, load_settings

# SIGTERM: stop accepting, let in-flight requests finish (each is a single Redis call).
GRACEFUL_SHUTDOWN_S = 10


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
    options = uvicorn_options(host, port)
    if processes > 1:
        uvicorn.run("ingress.server:app_from_environment", factory=True, workers=processes, **options)
    else:
        uvicorn.Server(uvicorn.Config(create_app(settings), **options)).run()
