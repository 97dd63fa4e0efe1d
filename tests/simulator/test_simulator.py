"""The GMS simulator over real loopback HTTP: Chat API, faults, the sequential sender and resends."""

from __future__ import annotations

import json
import time

import httpx
import msgspec
import pytest

from shared.classify import classify
from shared.models import Payload, Trigger, WakeUp
from simulator.cli import main
from simulator.scenario import ScenarioConfig, open_chat, run_scenario
from simulator.sender import PushSender
from simulator.server import ChatServer
from simulator.transcript import EventSpec
from tests.simulator.conftest import SERVICE, Receiver, agent_says, new_chat, refresh, wait_for

# Chat API ------------------------------------------------------------------------------------------


def test_request_chat_reads_push_user_data(client: httpx.Client, chat_server: ChatServer) -> None:
    body = open_chat(client, chat_server.base_url, service=SERVICE, mode="payload", device_id="dev-42")
    assert body["statusCode"] == 0 and body["chatEnded"] is False
    chat = chat_server.store.get(str(body["chatId"]))
    assert chat is not None
    assert (chat.mode, chat.device_id, chat.service) == ("payload", "dev-42", SERVICE)
    assert body["secureKey"] == chat.secure_key != chat.cometd_key
    assert (body["userId"], body["alias"]) == (chat.user_id, chat.alias)


def test_refresh_checks_credentials_and_records_the_key_used(
    client: httpx.Client, chat_server: ChatServer
) -> None:
    chat = new_chat(client, chat_server)
    assert refresh(client, chat_server, chat).json()["statusCode"] == 0
    for form in ({"secureKey": chat.cometd_key}, {"secureKey": "nope"}, {"userId": "nope"}):
        response = refresh(client, chat_server, chat, overrides=form)
        assert response.status_code == 200
        assert response.json() == {
            "statusCode": 2,
            "errors": [{"code": 102, "advice": response.json()["errors"][0]["advice"]}],
        }
    records = chat_server.log.records(chat.chat_id)
    assert [r.key_kind for r in records] == ["rest", "cometd", "other", "rest"]
    assert [r.outcome for r in records] == ["ok", "auth_error", "auth_error", "auth_error"]
    assert [r.user_id_ok for r in records] == [True, True, True, False]
    assert chat_server.log.count(chat.chat_id, "ok") == 1


def test_refresh_returns_events_from_position(client: httpx.Client, chat_server: ChatServer) -> None:
    chat = new_chat(client, chat_server)
    chat_server.store.append(
        chat.chat_id,
        [
            EventSpec("ParticipantJoined", "agent"),
            EventSpec("Message", "agent", "hi", {"x-sim": 1}),
            EventSpec("TypingStarted"),
            EventSpec("FutureType", "system", "later", {"x-future": {"a": [1]}}),
        ],
    )
    body = refresh(client, chat_server, chat, position=3).json()
    assert body["statusCode"] == 0 and body["chatEnded"] is False
    assert body["nextPosition"] == 6
    assert [e["index"] for e in body["messages"]] == [3, 4, 5]
    assert body["messages"][0] == {
        "index": 3,
        "type": "Message",
        "utcTime": body["messages"][0]["utcTime"],
        "from": {"nickname": "Anna", "participantId": 2, "type": "Agent"},
        "text": "hi",
        "x-sim": 1,
    }
    assert body["messages"][2]["x-future"] == {"a": [1]}
    assert refresh(client, chat_server, chat, position=6).json()["messages"] == []
    assert refresh(client, chat_server, chat, position=1).json()["messages"][0]["type"] == "ParticipantJoined"


def test_send_and_disconnect(client: httpx.Client, chat_server: ChatServer) -> None:
    chat = new_chat(client, chat_server)
    base = f"{chat_server.base_url}/genesys/2/chat/{SERVICE}/{chat.chat_id}"
    creds = {"userId": chat.user_id, "secureKey": chat.secure_key, "alias": chat.alias}
    assert client.post(f"{base}/send", data={**creds, "message": "hello"}).json()["statusCode"] == 0
    assert client.post(f"{base}/disconnect", data={**creds, "secureKey": "x"}).json()["statusCode"] == 2
    assert client.post(f"{base}/disconnect", data=creds).json()["chatEnded"] is True
    body = refresh(client, chat_server, chat).json()
    assert body["chatEnded"] is True
    assert [(e["type"], e["from"]["type"]) for e in body["messages"][1:]] == [
        ("Message", "Client"),
        ("ParticipantLeft", "Client"),
    ]


# Faults --------------------------------------------------------------------------------------------


def test_fault_http503_and_status1(client: httpx.Client, chat_server: ChatServer) -> None:
    chat = new_chat(client, chat_server)
    chat_server.faults.fail_refresh_http503 = 1.0
    assert refresh(client, chat_server, chat).status_code == 503
    chat_server.faults.fail_refresh_http503 = 0.0
    chat_server.faults.fail_refresh_status1 = 1.0
    assert refresh(client, chat_server, chat).json()["statusCode"] == 1
    chat_server.faults.fail_refresh_status1 = 0.0
    assert refresh(client, chat_server, chat).json()["statusCode"] == 0
    assert [r.outcome for r in chat_server.log.records()] == ["http503", "status1", "ok"]


def test_fault_fail_until_deadline(client: httpx.Client, chat_server: ChatServer) -> None:
    chat = new_chat(client, chat_server)
    chat_server.faults.fail_for(1.0)  # the refresh below must arrive within it, even on a loaded machine
    assert refresh(client, chat_server, chat).status_code == 503
    wait_for(lambda: refresh(client, chat_server, chat).status_code == 200, what="the outage to end")
    assert chat_server.log.count(outcome="http503") >= 1


def test_fault_http400_ends_the_chat(client: httpx.Client, chat_server: ChatServer) -> None:
    chat, other = new_chat(client, chat_server), new_chat(client, chat_server)
    chat_server.faults.fail_refresh_http400_end = {chat.chat_id}
    response = refresh(client, chat_server, chat)
    assert response.status_code == 400 and response.json()["statusCode"] == 2
    chat_server.faults.fail_refresh_http400_end = 0.0
    assert refresh(client, chat_server, chat).status_code == 400  # stays disconnected
    assert refresh(client, chat_server, other).status_code == 200
    ended = chat_server.store.get(chat.chat_id)
    assert ended is not None and ended.ended and ended.events[-1]["type"] == "ParticipantLeft"


def test_fault_alias_change_and_stale_alias(client: httpx.Client, chat_server: ChatServer) -> None:
    chat = new_chat(client, chat_server)
    chat_server.faults.alias_change = 1.0
    new_alias = refresh(client, chat_server, chat).json()["alias"]
    assert new_alias != chat.alias
    chat_server.faults.alias_change = 0.0
    assert refresh(client, chat_server, chat).status_code == 400  # the old alias is rejected ...
    chat_server.faults.require_alias = False
    assert refresh(client, chat_server, chat).json()["statusCode"] == 0  # ... unless enforcement is off
    assert refresh(client, chat_server, chat, alias=new_alias).json()["alias"] == new_alias
    assert [r.alias_kind for r in chat_server.log.records()] == ["current", "stale", "stale", "current"]
    assert [r.outcome for r in chat_server.log.records()] == ["ok", "alias_error", "ok", "ok"]


def test_fault_refresh_delay(client: httpx.Client, chat_server: ChatServer) -> None:
    chat = new_chat(client, chat_server)
    chat_server.faults.refresh_delay_ms = 150
    started = time.monotonic()
    assert refresh(client, chat_server, chat).json()["statusCode"] == 0
    assert time.monotonic() - started >= 0.15


# Sender --------------------------------------------------------------------------------------------


def test_pushes_match_the_protocol(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    reliable, payload, wakeup = (new_chat(client, chat_server, m) for m in ("reliable", "payload", "wakeup"))
    chat_server.store.configure(payload.chat_id, payload_as_string=True)
    with PushSender(push_url, chat_server.store, resend_delay_s=60) as sender:
        for chat in (reliable, payload, wakeup):
            agent_says(chat_server, chat, "a", "b")
        chat_server.store.configure(payload.chat_id, payload_as_string=False)
        agent_says(chat_server, payload, "c")
        wait_for(lambda: sender.idle(include_pending=False), what="all pushes answered")
    kinds = [classify(json.dumps(body).encode()) for body in recv.bodies]
    triggers = [n for n in kinds if isinstance(n, Trigger)]
    assert [(t.session_id, t.position, t.attempt, t.secure_key) for t in triggers] == [
        (reliable.chat_id, 1, 0, None),
        (reliable.chat_id, 1, 0, None),
    ]
    assert all(b["message"]["secureKey"] == reliable.cometd_key for b in recv.bodies[:2])
    assert all("app-dbid" not in t for t in recv.triggers())  # not in the default flex-push-content
    payloads = [n for n in kinds if isinstance(n, Payload)]
    assert [[e.index for e in p.events] for p in payloads] == [[2, 3], [4]]
    assert isinstance(recv.bodies[2]["message"], str) and isinstance(recv.bodies[5]["message"], dict)
    assert [n.device_id for n in kinds if isinstance(n, WakeUp)] == ["dev-wakeup", "dev-wakeup"]
    stats = sender.stats()
    assert (stats.sent, stats.acked, stats.rejected) == (6, 6, 0)


def test_flex_push_content_secure_key_and_removed_participant(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    chat = new_chat(client, chat_server)
    chat_server.store.configure(chat.chat_id, flex_secure_key=True)
    with PushSender(push_url, chat_server.store, resend_delay_s=60) as sender:
        chat_server.store.end(chat.chat_id, who="customer")
        wait_for(lambda: len(recv.bodies) == 2, what="two triggers")
        assert sender.store.pending_count() == 1  # the -1 trigger is never resent
    assert [(t["notify-position"], t["secure-key"]) for t in recv.triggers()] == [
        ("1", chat.secure_key),
        ("-1", chat.secure_key),
    ]


def test_resend_until_refresh(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    chat = new_chat(client, chat_server)
    with PushSender(push_url, chat_server.store, resend_delay_s=0.2, resend_attempts=5) as sender:
        agent_says(chat_server, chat, "hello")
        wait_for(lambda: len(recv.triggers()) >= 2, what="a resend")
        assert [t["notify-attempt"] for t in recv.triggers()[:2]] == ["0", "1"]
        assert refresh(client, chat_server, chat).json()["statusCode"] == 0
        # Every trigger sent before the refresh arrived is acknowledged: nothing is left to resend.
        wait_for(lambda: sender.idle(), what="no pending trigger")
        seen = len(recv.triggers())
        time.sleep(0.5)  # an observation window longer than the resend delay, not synchronisation
        assert len(recv.triggers()) == seen
        agent_says(chat_server, chat, "again")
        wait_for(lambda: len(recv.triggers()) == seen + 1, what="the next trigger")
        assert recv.triggers()[-1]["notify-position"] == "3"  # 1 and 2 were acknowledged
    assert sender.stats(chat.chat_id).resends == seen - 1


def test_refresh_before_the_reply_acknowledges_the_trigger(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    recv.chat_api_url, recv.refresh_before_reply = chat_server.base_url, True
    chat = new_chat(client, chat_server)
    # The trigger is this relay's only source of credentials, the alias (app-dbid) included.
    chat_server.store.configure(chat.chat_id, flex_secure_key=True, flex_app_dbid=True)
    with PushSender(push_url, chat_server.store, resend_delay_s=0.2) as sender:
        agent_says(chat_server, chat, "1", "2", "3")
        wait_for(lambda: chat_server.log.count(chat.chat_id) == 3, what="three refreshes")
        wait_for(sender.idle, what="every trigger acknowledged")
    assert sender.stats().resends == 0
    # The first refresh already returned events 2..4, so later triggers point past them.
    assert [t["notify-position"] for t in recv.triggers()] == ["1", "5", "5"]


def test_resends_are_bounded(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    chat = new_chat(client, chat_server)
    with PushSender(push_url, chat_server.store, resend_delay_s=0.1, resend_attempts=2) as sender:
        agent_says(chat_server, chat, "hello")
        wait_for(lambda: sender.stats().exhausted == 1, what="the trigger to be given up")
        assert [t["notify-attempt"] for t in recv.triggers()] == ["0", "1", "2"]
        assert {t["notify-position"] for t in recv.triggers()} == {"1"}
        assert sender.stats().resends == 2


def test_duplicates_and_rejections_are_recorded(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    recv.status = 500
    chat = new_chat(client, chat_server)
    with PushSender(push_url, chat_server.store, resend_delay_s=60, duplicate_rate=1.0) as sender:
        agent_says(chat_server, chat, "hello")
        wait_for(lambda: sender.stats().sent == 2, what="trigger and duplicate")
    assert recv.bodies[0] == recv.bodies[1]
    stats = sender.stats(chat.chat_id)
    assert (stats.duplicates, stats.acked, stats.rejected) == (1, 0, 2)


def test_sender_is_sequential_on_one_connection(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    recv.delay_s = 0.01
    chats = [new_chat(client, chat_server, m) for m in ("reliable", "payload", "wakeup", "reliable")]
    with PushSender(push_url, chat_server.store, resend_delay_s=60) as sender:
        for chat in chats:
            agent_says(chat_server, chat, "1", "2", "3")
        agent_says(chat_server, chats[1], "4")
        wait_for(lambda: len(recv.bodies) == 11, what="all pushes")
        wait_for(lambda: sender.idle(include_pending=False), what="the last reply")
    assert recv.max_active == 1
    assert len(recv.peers) == 1  # one keep-alive connection


# Scenario and CLI ----------------------------------------------------------------------------------


def test_run_scenario_against_a_refreshing_receiver(
    chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    recv.chat_api_url = chat_server.base_url
    api_url = push_url.removesuffix("/push")
    # The receiver refreshes after replying, each time with a new httpx.AsyncClient (~30 ms of CPU on
    # one event loop): with rate=0 the last refreshes can trail their triggers by seconds on a loaded
    # machine, so the resend delay that `resends == 0` relies on is generous.
    config = ScenarioConfig(
        chats=6, events_per_chat=8, rate=0, resend_delay_s=10, seed=7, api_url=api_url, api_token="t0k"
    )
    report = run_scenario(push_url, config, server=chat_server)
    assert report.settled
    totals = report.totals
    assert (totals.chats, totals.resends, totals.pushes_rejected, totals.refreshes_cometd_key) == (6, 0, 0, 0)
    assert totals.pushes_acked == totals.pushes_sent > 0
    assert sorted(c.mode for c in report.chats) == ["payload"] * 2 + ["reliable"] * 2 + ["wakeup"] * 2
    assert all(c.ended and c.transcript[-1]["type"] == "ParticipantLeft" for c in report.chats)
    reliable = [c for c in report.chats if c.mode == "reliable"]
    assert all(c.registration_status == 204 and c.refreshes for c in reliable)
    assert recv.tokens == ["Bearer t0k"] * 2
    assert set(recv.sessions) == {c.session_id for c in reliable}
    decoded = json.loads(report.to_json())
    assert decoded["chats"][0]["transcript"] == report.chats[0].transcript
    assert msgspec.json.decode(report.to_json()) == report.to_dict()


def test_cli_prints_summary_and_json(
    receiver: tuple[Receiver, str], capsys: pytest.CaptureFixture[str]
) -> None:
    recv, push_url = receiver
    argv = ["--push-url", push_url, "--chat-port", "0", "--chats", "2", "--events", "3", "--rate", "0"]
    assert main([*argv, "--mode", "payload", "--push-token", "s3cret"]) == 0
    assert "pushes: sent" in capsys.readouterr().out
    assert main([*argv, "--mode", "wakeup", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["chats"] == 2 and report["settled"] is True
    assert all(body["message"] == "dummy message" for body in recv.bodies[-report["totals"]["pushes_sent"] :])
