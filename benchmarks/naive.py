"""The naive baseline for benchmarks/pipeline.py: one plain RQ job per notification, one Refresh per job.

What a first implementation of the relay looks like, run the way RQ runs it by default:
  app   a Starlette endpoint (uvicorn, uvloop + httptools, as the real ingress) whose POST /push parses
        the body and calls `Queue.enqueue` with the raw body, once per push;
  job   `handle_push(body)`: parse the trigger, call Chat API v2 Refresh with the trigger's
        userData `user-id`/`secure-key` and transcriptPosition = notify-position, and XADD every
        returned event with index >= position to `gms-relay:events:{deviceId}` (the relay's stream
        layout). No coalescing, no single flight, no cursor: duplicates are possible.
  worker `rq worker -w rq.worker.Worker` (forking: one fork per job).

Kept as cheap as a naive design allows, so the comparison is conservative: this module imports only
the standard library and redis (already loaded by `rq worker`), and the workers preload it with
`rq worker -c benchmarks.naive`, so a forked job does not import anything.

    python benchmarks/naive.py serve --port P --redis-url URL      # the app
    rq worker -w rq.worker.Worker -c benchmarks.naive -u URL naive  # a worker (env GMS_URL, REDIS_URL)
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
# Run as a script, this folder would come first on sys.path and benchmarks/ingress.py would shadow the
# `ingress` package: drop it and put the repo root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import quote, urlencode, urlsplit  # noqa: E402

import redis  # noqa: E402
from redis.typing import EncodableT, FieldT  # noqa: E402

QUEUE_NAME = "naive"
JOB = "benchmarks.naive.handle_push"
_SERVICE = "customer-support"
_STREAM_PREFIX = "gms-relay:events:"
_STREAM_MAXLEN = 10000
_REFRESH_TIMEOUT_S = 5.0


# --- the app -------------------------------------------------------------------------------------------


def create_app(redis_url: str) -> Any:
    """POST /push: parse the body, enqueue one RQ job carrying it, answer."""
    from rq import Queue
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    queue = Queue(QUEUE_NAME, connection=redis.Redis.from_url(redis_url))

    async def push(request: Request) -> Response:
        raw = await request.body()
        try:
            message = json.loads(raw)
        except ValueError:
            return JSONResponse({"error": "invalid_json"}, status_code=400)
        if not isinstance(message, dict) or "deviceId" not in message:
            return JSONResponse({"error": "invalid_push"}, status_code=400)
        # Called straight from the async handler (blocking the loop for its round trips), as naive code
        # does; with sequential GMS senders this is also cheaper than a thread-pool hand-off.
        queue.enqueue(JOB, raw.decode())
        return JSONResponse({"status": "queued"})

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    return Starlette(routes=[Route("/push", push, methods=["POST"]), Route("/livez", livez)])


def serve(port: int, redis_url: str) -> None:
    """Serve the app with the real ingress's uvicorn settings (ingress/server.py)."""
    import uvicorn

    from ingress.server import uvicorn_options

    uvicorn.Server(uvicorn.Config(create_app(redis_url), **uvicorn_options("127.0.0.1", port))).run()


# --- the job -------------------------------------------------------------------------------------------


def _trigger(body: str) -> tuple[str, dict[str, Any]]:
    """The device id and the PushUrl event's userData (plus message-level userData) of a push."""
    push = json.loads(body)
    message = push.get("message")
    if isinstance(message, str):
        message = json.loads(message)
    data: dict[str, Any] = dict(message.get("userData") or {})
    for event in message.get("messages") or []:
        if event.get("type") == "PushUrl":
            data.update(event.get("userData") or {})
    return str(push["deviceId"]), data


def _refresh(gms_url: str, session_id: str, form: dict[str, str]) -> dict[str, Any]:
    parts = urlsplit(gms_url)
    connection = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=_REFRESH_TIMEOUT_S
    )
    try:
        path = f"{parts.path.rstrip('/')}/genesys/2/chat/{_SERVICE}/{quote(session_id, safe='')}/refresh"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", path, urlencode(form), headers)
        reply = connection.getresponse()
        content = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"refresh answered HTTP {reply.status}")
        result: dict[str, Any] = json.loads(content)
        return result
    finally:
        connection.close()


def handle_push(body: str) -> int:
    """One notification: Refresh from notify-position, XADD what came back. Returns events written."""
    device_id, data = _trigger(body)
    session_id = str(data.get("session-id") or "")
    position = int(data.get("notify-position", "1"))
    if not session_id:
        return 0
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    stream = _STREAM_PREFIX + device_id
    if position < 1:  # notify-position -1: the customer left; nothing to ask Refresh for
        client.xadd(stream, {"type": "chat.ended", "sessionId": session_id, "data": "{}"})
        return 0
    form = {
        "userId": str(data.get("user-id", "")),
        "secureKey": str(data.get("secure-key", "")),
        "transcriptPosition": str(position),
    }
    response = _refresh(os.environ["GMS_URL"], session_id, form)
    if response.get("statusCode", 0) != 0:
        raise RuntimeError(f"refresh failed: {response.get('errors')}")
    pipe = client.pipeline(transaction=False)
    written = 0
    for event in response.get("messages") or []:
        index = event.get("index")
        if not isinstance(index, int) or index < position or event.get("type") == "PushUrl":
            continue
        fields: dict[FieldT, EncodableT] = {"type": str(event.get("type")), "sessionId": session_id}
        fields |= {"index": index, "data": json.dumps(event)}
        pipe.xadd(stream, fields, maxlen=_STREAM_MAXLEN, approximate=True)
        written += 1
    if response.get("chatEnded"):
        pipe.xadd(stream, {"type": "chat.ended", "sessionId": session_id, "data": "{}"})
    pipe.execute()
    client.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="naive baseline app (one RQ job per push)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="serve POST /push")
    serve_cmd.add_argument("--port", type=int, required=True)
    serve_cmd.add_argument("--redis-url", required=True)
    args = parser.parse_args(argv)
    serve(args.port, args.redis_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
