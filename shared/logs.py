"""Structured logs: one JSON object per line, with the ids that matter passed as `extra`."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

# Attributes every LogRecord has; anything else came in through `extra=` and is emitted as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# uvicorn passes `msg` again with ANSI colour codes for its own console formatter: noise in JSON.
_DROPPED = {"color_message"}
# Names that must never reach a log line, whoever passes them.
_SECRET_NAMES = {"secureKey", "secure_key", "token", "secret", "password", "authorization"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in _DROPPED and not name.startswith("_"):
                entry[name] = "[redacted]" if name in _SECRET_NAMES else value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        return msgspec.json.encode(entry).decode()


def configure_logging(level: str) -> None:
    """Route the relay's, RQ's and uvicorn's logs through the JSON formatter on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "rq.worker", "rq"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # httpx logs each request URL at INFO; URLs can carry tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
