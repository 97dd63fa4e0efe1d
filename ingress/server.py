"""Serve the ingress with uvicorn (uvloop + httptools): the one code path for every entry point."""

from __future__ import annotations

import uvicorn

from ingress.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings

# SIGTERM: stop accepting, let in-flight requests finish (each is a single Redis call).
GRACEFUL_SHUTDOWN_S = 10


def serve(settings: Settings, host: str = "0.0.0.0", port: int = 8080) -> None:
    configure_logging(settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
        date_header=False,
    )
    uvicorn.Server(config).run()
