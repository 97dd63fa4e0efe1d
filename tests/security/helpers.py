"""Shared by the secrets tests: fresh tokens, requests that carry them, and a real relay pipeline run."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from shared import keys
from shared.redis_server import RedisServer
from simulator.receiver import WebhookReceiver
from simulator.report import Report
from simulator.scenario import ModeChoice, ScenarioConfig, run_scenario
from simulator.server import ChatServer
from tests.e2e.checks import expected_end, wait_all_done
from tests.processes import RelayProcesses, relay_env, relay_processes, wait_for
from tests.pushes import body, trigger_message

REGISTRATION = {"deviceId": "d1", "userId": "u1", "secureKey": "REST-KEY", "alias": "117"}
VALID_TRIGGER = body(trigger_message(1))
BROWSER_ORIGIN = "https://app.example.com"  # the relay's CORS_ORIGINS in a pipeline run


def fresh_tokens() -> dict[str, str]:
    """Fresh secrets for one relay: any of them turning up in an output is a leak, not a coincidence."""
    return {
        "PUSH_TOKEN": "push-" + secrets.token_hex(16),
        "API_TOKEN": "api-" + secrets.token_hex(16),
        "WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        "DEVICE_TOKEN_SECRET": "dts-" + secrets.token_hex(16),
    }


def basic_auth(password: str) -> str:
    return "Basic " + base64.b64encode(f"gms:{password}".encode()).decode()


@dataclass
class Run:
    relay: RelayProcesses
    report: Report
    tokens: dict[str, str]
    chat_keys: dict[str, str]  # label -> every REST and CometD key the chats had


@contextmanager
def pipeline(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    chat_server: ChatServer,
    log_level: str = "WARNING",
    mode: ModeChoice = "reliable",
) -> Iterator[Run]:
    """Chats (reliable ones half with `secure-key` in their triggers, half registered with PUT
    /sessions) through an authenticated ingress, 2 workers and a signed webhook sink, until every
    chat is done on the stream and its webhooks are delivered. Yields with the relay still running."""
    tokens = fresh_tokens()
    with WebhookReceiver() as receiver:
        env = relay_env(
            REDIS_URL=redis_server.url,
            GMS_URL=chat_server.base_url,
            WEBHOOK_URL=receiver.url,
            LOG_LEVEL=log_level,
            CORS_ORIGINS=BROWSER_ORIGIN,
            **tokens,
        )
        with relay_processes(env, workers=2) as relay:
            config = ScenarioConfig(
                chats=9,
                events_per_chat=8,
                rate=400.0,
                mode=mode,
                resend_delay_s=2.0,
                resend_attempts=10,
                duplicate_rate=0.1,
                flex_secure_key_rate=0.5,
                api_url=relay.base_url,
                api_token=tokens["API_TOKEN"],
                settle_timeout_s=60.0,
                seed=3,  # both credential paths among the reliable chats, in either mode
            )
            report = run_scenario(
                f"{relay.base_url}/push?token={tokens['PUSH_TOKEN']}", config, server=chat_server
            )
            assert report.totals.pushes_rejected == 0
            assert report.totals.registrations_failed == 0
            reliable = [c for c in report.chats if c.mode == "reliable"]
            assert {c.flex_secure_key for c in reliable} == {True, False}  # both credential paths
            assert report.totals.refreshes_ok > 0 and report.totals.refreshes_cometd_key == 0
            wait_all_done(redis_client, report, timeout_s=60)
            ending = {c.session_id for c in report.chats if c.mode != "wakeup" and expected_end(c)}
            assert ending

            def webhooks_done() -> bool:
                accepted = [d.json for d in receiver.accepted()]
                ended = {d["data"]["sessionId"] for d in accepted if d["type"] == "chat.ended"}
                return ended == ending and redis_client.zcard(keys.DELIVERIES) == 0

            wait_for(webhooks_done, timeout_s=30)
            chat_keys: dict[str, str] = {}
            for chat_id in (c.session_id for c in report.chats):
                chat = chat_server.store.get(chat_id)
                assert chat is not None
                chat_keys[f"REST secureKey of {chat_id}"] = chat.secure_key
                chat_keys[f"CometD secureKey of {chat_id}"] = chat.cometd_key
            yield Run(relay, report, tokens, chat_keys)


def key_type(client: redis.Redis, key: bytes) -> str:
    kind = client.type(key)
    return kind.decode() if isinstance(kind, bytes) else str(kind)
