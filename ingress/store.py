"""The ingress's only conversation with Redis: one Lua call per request, bounded in time."""

from __future__ import annotations

import itertools
import secrets
import time
from hashlib import sha1

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from shared.errors import RedisUnavailable
from shared.models import Notification, Payload, SessionRegistration, Trigger
from shared.scripts import ScriptSources
from shared.settings import Settings

# GMS must never hang on us: answer 503 well inside 250 ms when Redis is gone or stuck.
REDIS_DEADLINE_S = 0.2


class IngressStore:
    """Stores notifications and registrations for the workers."""

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client or aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=REDIS_DEADLINE_S,
            socket_connect_timeout=REDIS_DEADLINE_S / 4,
            retry_on_timeout=False,
            retry=None,
            max_connections=256,
        )
        self.sources = ScriptSources.build(settings).sources
        self.shas = {name: sha1(source.encode()).hexdigest() for name, source in self.sources.items()}
        # Job ids unique across ingress processes without asking Redis: 128 random bits per process
        # (pids repeat: in containers every process is pid 1) and a counter.
        self._job_prefix = f"drain-{secrets.token_hex(16)}-"
        self._job_counter = itertools.count()

    def _job_id(self) -> str:
        return f"{self._job_prefix}{next(self._job_counter)}"

    async def _call(self, script: str, args: list[str | bytes]) -> str:
        # The client's socket timeouts bound every step (connect, write, read) within the deadline.
        try:
            try:
                result = await self.client.evalsha(self.shas[script], 0, *args)
            except NoScriptError:  # Redis restarted or its scripts were flushed
                await self.client.script_load(self.sources[script])
                result = await self.client.evalsha(self.shas[script], 0, *args)
        except (RedisError, OSError, TimeoutError):
            raise RedisUnavailable("Redis is unreachable; the notification was not stored") from None
        return result.decode() if isinstance(result, bytes) else str(result)

    async def ingest(self, note: Notification) -> str:
        """Store one notification durably; returns the outcome (queued, duplicate, covered, ...)."""
        head: list[str | bytes] = [
            "",
            note.device_id,
            "",
            str(time.time_ns() // 1_000_000),
            self._job_id(),
        ]
        if isinstance(note, Trigger):
            head[0], head[2] = "t", note.session_id or ""
            head += [
                str(note.position),
                str(note.attempt),
                note.user_id or "",
                note.secure_key or "",
                note.app_dbid or "",
            ]
        elif isinstance(note, Payload):
            head[0], head[2] = "p", note.session_id or ""
            head += ["1" if note.chat_ended else "", note.alias or ""]
            for event in note.events:
                head += [str(event.index), bytes(event.raw)]
        else:
            head[0] = "w"
            head.append(msgspec.json.encode({"deviceId": note.device_id, "text": note.text}))
        return await self._call("ingest", head)

    async def register(self, session_id: str, reg: SessionRegistration) -> str:
        args: list[str | bytes] = [
            session_id,
            reg.deviceId,
            reg.userId,
            reg.secureKey,
            "" if reg.alias is None else str(reg.alias),
            reg.service or "",
            str(time.time_ns() // 1_000_000),
            self._job_id(),
        ]
        return await self._call("register", args)

    async def forget(self, session_id: str) -> str:
        return await self._call("forget", [session_id])

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.client.aclose()
