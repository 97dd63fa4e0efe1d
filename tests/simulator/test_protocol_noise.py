"""The simulator's protocol cases beyond the happy path: app-dbid, alias enforcement and changes, repeated,
ahead and late notifications, large transcripts. Against the simulator itself, over loopback."""

from __future__ import annotations

import json
import random
import time

import httpx
import msgspec
import pytest

from simulator.chat_api import ALIAS_ERROR_CODE
from simulator.cli import main
from simulator.scenario import ScenarioConfig, run_scenario
from simulator.sender import PushSender
from simulator.server import ChatServer
from simulator.transcript import Chat
from tests.simulator.conftest import SERVICE, Receiver, agent_says, new_chat, refresh, wait_for

RELAY_REPLY_MAX_BYTES = 8 * 1024 * 1024  # the relay's cap on a Refresh reply


def current(server: ChatServer, chat: Chat) -> Chat:
    found = server.store.get(chat.chat_id, with_events=False)
    assert found is not None
    return found


def chat_call(
    client: httpx.Client, server: ChatServer, chat: Chat, action: str, **form: str
) -> httpx.Response:
    creds = {"userId": chat.user_id, "secureKey": chat.secure_key, "alias": chat.alias, **form}
    return client.post(f"{server.base_url}/genesys/2/chat/{SERVICE}/{chat.chat_id}/{action}", data=creds)


# Alias enforcement ---------------------------------------------------------------------------------


def test_refresh_with_a_missing_unknown_or_stale_alias_is_rejected(
    client: httpx.Client, chat_server: ChatServer
) -> None:
    chat = new_chat(client, chat_server)
    old_alias = chat.alias
    new_alias = chat_server.store.switch_alias(chat.chat_id)
    for alias in ("", "nope", old_alias):
        response = refresh(client, chat_server, chat, alias=alias)
        assert response.status_code == 400
        body = response.json()
        assert body["statusCode"] == 2 and body.get("messages") is None
        [error] = body["errors"]
        assert error["code"] == ALIAS_ERROR_CODE and isinstance(error["advice"], str) and error["advice"]
    assert refresh(client, chat_server, chat, alias=new_alias).json()["statusCode"] == 0
    records = chat_server.log.records(chat.chat_id)
    assert [r.alias_kind for r in records] == ["missing", "unknown", "stale", "current"]
    assert [r.outcome for r in records] == ["alias_error"] * 3 + ["ok"]
    assert [r.http_status for r in records] == [400, 400, 400, 200]
    # A rejected Refresh acknowledges nothing: only the last one counted.
    assert current(chat_server, chat).refresh_count == 1


def test_alias_is_checked_after_unknown_chat_faults_and_credentials(
    client: httpx.Client, chat_server: ChatServer
) -> None:
    chat = new_chat(client, chat_server)
    faults = chat_server.faults
    bad = "nope"
    unknown = client.post(
        f"{chat_server.base_url}/genesys/2/chat/{SERVICE}/NOSUCHCHAT/refresh",
        data={"userId": "u", "secureKey": "k", "alias": "", "transcriptPosition": "1"},
    )
    assert unknown.status_code == 200 and unknown.json()["statusCode"] == 2
    faults.fail_refresh_http503 = 1.0
    assert refresh(client, chat_server, chat, alias=bad).status_code == 503
    faults.fail_refresh_http503 = 0.0
    auth = refresh(client, chat_server, chat, overrides={"secureKey": chat.cometd_key, "alias": bad})
    assert (auth.status_code, auth.json()["errors"][0]["code"]) == (200, 102)
    # Then the alias, before the agent-disconnected 400, statusCode 1 and a bad transcriptPosition.
    faults.fail_refresh_http400_end = {chat.chat_id}
    faults.fail_refresh_status1 = 1.0
    assert refresh(client, chat_server, chat, alias=bad).json()["errors"][0]["code"] == ALIAS_ERROR_CODE
    assert (
        refresh(client, chat_server, chat, position=0, alias=bad).json()["errors"][0]["code"]
        == ALIAS_ERROR_CODE
    )
    assert refresh(client, chat_server, chat).status_code == 400  # current alias: the agent-left 400
    outcomes = [r.outcome for r in chat_server.log.records()]
    assert outcomes == ["unknown_chat", "http503", "auth_error", "alias_error", "alias_error", "http400_end"]
    assert [r.alias_kind for r in chat_server.log.records()][:2] == ["missing", "unknown"]


def test_require_alias_off_accepts_any_alias(client: httpx.Client, chat_server: ChatServer) -> None:
    chat = new_chat(client, chat_server)
    chat_server.faults.require_alias = False
    for alias in ("", "nope"):
        assert refresh(client, chat_server, chat, alias=alias).json()["statusCode"] == 0
    assert chat_call(client, chat_server, chat, "send", alias="", message="hi").json()["statusCode"] == 0
    assert [r.alias_kind for r in chat_server.log.records()] == ["missing", "unknown"]


def test_send_and_disconnect_need_the_current_alias(client: httpx.Client, chat_server: ChatServer) -> None:
    chat = new_chat(client, chat_server)
    new_alias = chat_server.store.switch_alias(chat.chat_id)
    for action, form in (("send", {"message": "hi"}), ("disconnect", {})):
        for alias in ("", chat.alias):
            response = chat_call(client, chat_server, chat, action, alias=alias, **form)
            assert response.status_code == 400 and response.json()["statusCode"] == 2
            assert response.json()["errors"][0]["code"] == ALIAS_ERROR_CODE
    # Credentials are checked first.
    assert chat_call(client, chat_server, chat, "send", secureKey="x").json()["errors"][0]["code"] == 102
    assert current(chat_server, chat).ended is False
    assert (
        chat_call(client, chat_server, chat, "send", alias=new_alias, message="hi").json()["alias"]
        == new_alias
    )
    assert chat_call(client, chat_server, chat, "disconnect", alias=new_alias).json()["chatEnded"] is True


# app-dbid and alias changes ------------------------------------------------------------------------


def test_app_dbid_carries_the_alias_current_when_each_trigger_is_sent(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    chat, plain = new_chat(client, chat_server), new_chat(client, chat_server)
    chat_server.store.configure(chat.chat_id, flex_app_dbid=True)
    with pytest.raises(ValueError, match="unknown chat option"):
        chat_server.store.configure(chat.chat_id, flex_alias=True)
    with PushSender(push_url, chat_server.store, resend_delay_s=1.0, resend_attempts=1) as sender:
        agent_says(chat_server, chat, "a")
        agent_says(chat_server, plain, "a")
        wait_for(lambda: len(recv.triggers()) == 2, what="the first triggers")
        first = chat.alias
        chat_server.faults.alias_change = 1.0  # the Refresh response hands out a new alias
        second = refresh(client, chat_server, chat).json()["alias"]
        chat_server.faults.alias_change = 0.0
        agent_says(chat_server, chat, "b")
        wait_for(lambda: len(recv.triggers(chat.chat_id)) == 2, what="the trigger after the change")
        third = chat_server.store.switch_alias(chat.chat_id)  # the resend carries the alias of its send
        wait_for(lambda: sender.stats(chat.chat_id).exhausted == 1, what="the resend")
    triggers = recv.triggers(chat.chat_id)
    assert [(t["notify-attempt"], t["app-dbid"]) for t in triggers] == [
        ("0", first),
        ("0", second),
        ("1", third),
    ]
    assert len({first, second, third}) == 3
    assert [r.app_dbid for r in sender.records(chat.chat_id)] == [first, second, third]
    assert all("app-dbid" not in t for t in recv.triggers(plain.chat_id))


def test_alias_switch_outside_refresh_is_revealed_by_later_triggers_and_refreshes(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    chat, plain = new_chat(client, chat_server), new_chat(client, chat_server)
    chat_server.store.configure(chat.chat_id, flex_app_dbid=True)
    chat_server.faults.alias_switch = 1.0  # before every pushed batch, but only of app-dbid chats
    with PushSender(push_url, chat_server.store, resend_delay_s=60) as sender:
        agent_says(chat_server, chat, "a", "b")  # one batch: one switch, two triggers
        # The sender reads app-dbid when it sends: let it send before the next batch switches again.
        wait_for(lambda: len(recv.triggers()) == 2, what="the first batch")
        agent_says(chat_server, plain, "a")
        agent_says(chat_server, chat, "c")
        wait_for(lambda: sender.idle(include_pending=False) and len(recv.triggers()) == 4, what="pushes")
    switched = current(chat_server, chat)
    assert switched.alias_switches == 2 and switched.aliases[0] == chat.alias and len(switched.aliases) == 3
    assert [t["app-dbid"] for t in recv.triggers(chat.chat_id)] == switched.aliases[1:2] * 2 + [
        switched.alias
    ]
    unchanged = current(chat_server, plain)
    assert (unchanged.alias_switches, unchanged.aliases) == (0, [plain.alias])
    # The relay's old alias no longer routes; the alias of the latest trigger does, and the response
    # names it too.
    assert refresh(client, chat_server, chat).status_code == 400
    assert refresh(client, chat_server, chat, alias=switched.alias).json()["alias"] == switched.alias
    assert chat_server.log.records(chat.chat_id)[0].alias_kind == "stale"


# Repeated, ahead and late notifications ------------------------------------------------------------


def test_new_events_without_a_refresh_repeat_position_and_attempt(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    chat = new_chat(client, chat_server)
    with PushSender(push_url, chat_server.store, resend_delay_s=60) as sender:
        for text in ("a", "b", "c"):
            agent_says(chat_server, chat, text)
            wait_for(lambda: sender.idle(include_pending=False), what="the trigger")
        agent_says(chat_server, chat, "d", "e")
        wait_for(lambda: len(recv.triggers()) == 5, what="five triggers")
        assert chat_server.store.pending_count() == 5
    # One trigger per new event, all "position 1, attempt 0": only the announced index differs.
    assert [(t["notify-position"], t["notify-attempt"]) for t in recv.triggers()] == [("1", "0")] * 5
    assert [body["message"]["messages"][0]["index"] for body in recv.bodies] == [2, 3, 4, 5, 6]
    assert [(r.position, r.attempt, r.resend, r.duplicate) for r in sender.records()] == [
        (1, 0, False, False)
    ] * 5
    assert sender.stats().triggers == 5


def test_another_client_refresh_makes_later_triggers_run_ahead(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    chat = new_chat(client, chat_server)
    with PushSender(push_url, chat_server.store, resend_delay_s=60):
        agent_says(chat_server, chat, "a", "b")
        wait_for(lambda: len(recv.triggers()) == 2, what="two triggers")
        assert chat_server.store.other_client_refresh(chat.chat_id) == 4
        # The other client's Refresh acknowledged both triggers: Chat Server will resend neither.
        assert chat_server.store.pending_count() == 0
        chat_server.faults.ahead_rate = 1.0  # every batch is fetched by the other client at once
        agent_says(chat_server, chat, "c")
        wait_for(lambda: len(recv.triggers()) == 3, what="the third trigger")
        agent_says(chat_server, chat, "d", "e")
        wait_for(lambda: len(recv.triggers()) == 5, what="five triggers")
        assert chat_server.store.pending_count() == 2  # "c" was acknowledged by the fetch of "d", "e"
    # Each batch's triggers point past the batch: "c" is 4, "d" and "e" are 5 and 6.
    assert [t["notify-position"] for t in recv.triggers()] == ["1", "1", "5", "7", "7"]
    seen = current(chat_server, chat)
    assert (seen.other_client_refreshes, seen.refresh_count, seen.acked_position) == (3, 0, 7)
    assert seen.last_refresh_at is not None
    assert chat_server.log.records() == []  # none of them went through the Chat API
    # The relay has fetched nothing: a Refresh from the position of a trigger would skip events.
    body = refresh(client, chat_server, chat, position=1).json()
    assert [e["index"] for e in body["messages"]] == list(range(1, 7))


def test_late_triggers_are_overtaken_and_hold_nothing_up(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    late, other, wakeup = (new_chat(client, chat_server, m) for m in ("reliable", "reliable", "wakeup"))
    sender = PushSender(push_url, chat_server.store, resend_delay_s=60, late_rate=1.0, late_delay_ms=1000)
    with sender:
        before = time.monotonic()
        agent_says(chat_server, late, "held back")
        wait_for(lambda: chat_server.store.pending_count() == 1, what="the late trigger to be sent")
        sender.late_rate = 0.0
        agent_says(chat_server, other, "1", "2")
        agent_says(chat_server, wakeup, "1")
        wait_for(lambda: len(recv.bodies) == 4, what="every push")
        wait_for(lambda: sender.idle(include_pending=False), what="the last reply")
    order = [t["session-id"] for t in recv.triggers()]
    assert order == [other.chat_id, other.chat_id, late.chat_id]
    assert recv.bodies[2]["message"] == "dummy message"  # the wake-up went before it too
    [held] = sender.records(late.chat_id)
    assert held.late and (held.position, held.attempt) == (1, 0)
    assert not any(r.late for r in sender.records() if r is not held)
    assert held.at - before >= 1.0
    assert recv.max_active == 1 and len(recv.peers) == 1  # still one POST at a time on one connection
    stats = sender.stats()
    assert (stats.triggers, stats.late, stats.sent) == (3, 1, 4)


def test_a_resend_can_overtake_its_late_original(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    chat = new_chat(client, chat_server)
    with PushSender(
        push_url, chat_server.store, resend_delay_s=0.3, resend_attempts=1, late_rate=1.0, late_delay_ms=1500
    ) as sender:
        agent_says(chat_server, chat, "a")
        wait_for(lambda: chat_server.store.pending_count() == 1, what="the late trigger to be sent")
        sender.late_rate = 0.0
        # Its resend timer started when Chat Server sent it, not when it reached the relay.
        wait_for(lambda: sender.stats().exhausted == 1 and sender.idle(), what="the end")
    assert [t["notify-attempt"] for t in recv.triggers()] == ["1", "0"]
    assert [(r.attempt, r.late) for r in sender.records()] == [(1, False), (0, True)]


def test_a_late_trigger_is_built_when_sent_and_acknowledged_before_it_arrives(
    client: httpx.Client, chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    chat = new_chat(client, chat_server)
    chat_server.store.configure(chat.chat_id, flex_app_dbid=True)
    with PushSender(
        push_url, chat_server.store, resend_delay_s=0.4, late_rate=1.0, late_delay_ms=1500
    ) as sender:
        agent_says(chat_server, chat, "a")
        wait_for(lambda: chat_server.store.pending_count() == 1, what="the late trigger to be sent")
        assert not sender.idle(include_pending=False)  # a held push counts as work in progress
        new_alias = chat_server.store.switch_alias(chat.chat_id)
        assert refresh(client, chat_server, chat, alias=new_alias).json()["nextPosition"] == 3
        assert chat_server.store.pending_count() == 0  # that Refresh acknowledged the held trigger
        assert recv.bodies == []
        wait_for(lambda: len(recv.bodies) == 1, what="the late trigger")
        time.sleep(0.5)  # an observation window longer than the resend delay, not synchronisation
    [trigger] = recv.triggers()
    # Position, attempt and alias as they were when Chat Server sent it, not when it arrived.
    assert (trigger["notify-position"], trigger["notify-attempt"], trigger["app-dbid"]) == (
        "1",
        "0",
        chat.alias,
    )
    assert sender.stats().resends == 0 and sender.idle()


# Large transcripts ----------------------------------------------------------------------------------


def test_a_20000_event_transcript_is_quick_and_one_refresh_returns_it(
    client: httpx.Client, chat_server: ChatServer
) -> None:
    chat = new_chat(client, chat_server)
    started = time.monotonic()
    assert chat_server.store.append_many(chat.chat_id, 20_000) == 20_002
    assert time.monotonic() - started < 2.0  # ~0.1 s here; generous for loaded CI machines
    response = refresh(client, chat_server, chat, position=1)
    body = response.json()
    assert body["statusCode"] == 0 and body["nextPosition"] == 20_002
    assert [e["index"] for e in body["messages"]] == list(range(1, 20_002))
    assert body["messages"][-1]["text"] == "line 20001"
    assert len(response.content) < RELAY_REPLY_MAX_BYTES / 2  # ordinary events: ~3.3 MB
    assert refresh(client, chat_server, chat, position=20_001).json()["messages"][0]["index"] == 20_001


# Scenario, report and CLI --------------------------------------------------------------------------


def test_scenario_with_protocol_noise_reports_it(
    chat_server: ChatServer, receiver: tuple[Receiver, str]
) -> None:
    recv, push_url = receiver
    recv.chat_api_url = chat_server.base_url
    faults = chat_server.faults
    faults.rng = random.Random(5)
    faults.alias_change, faults.alias_switch, faults.ahead_rate = 0.3, 0.3, 0.3
    config = ScenarioConfig(
        chats=6,
        events_per_chat=12,
        rate=0,
        mode="reliable",
        resend_delay_s=1,  # a refresh racing an alias change can fail; its resend then recovers
        flex_secure_key_rate=0.5,
        app_dbid_rate=0.5,
        late_rate=0.3,
        late_delay_ms=50,
        customer_message_rate=0.3,  # Send (and the final Disconnect) must use the current alias
        seed=11,
        api_url=push_url.removesuffix("/push"),
        api_token="t0k",
    )
    report = run_scenario(push_url, config, server=chat_server)
    assert report.settled
    t = report.totals
    assert all(c.flex_app_dbid for c in report.chats if c.flex_secure_key)
    assert {c.flex_secure_key for c in report.chats} == {True, False}
    for chat in report.chats:
        dbids = [r.app_dbid for r in chat.push_log if r.kind == "trigger"]
        assert all(d in chat.aliases for d in dbids) if chat.flex_app_dbid else set(dbids) == {None}
        assert chat.alias_switches == 0 or chat.flex_app_dbid
        assert chat.ended and chat.transcript[-1]["type"] == "ParticipantLeft"
    records = [r for c in report.chats for r in c.refreshes]
    assert t.refreshes_alias_error == sum(1 for r in records if r.outcome == "alias_error")
    assert t.refreshes_missing_alias == sum(1 for r in records if r.alias_kind == "missing") == 0
    assert t.triggers == sum(
        1 for c in report.chats for r in c.push_log if r.attempt == 0 and not r.duplicate
    )
    assert t.resends_per_1000_triggers == round(1000 * t.resends / t.triggers, 2)
    assert t.late == sum(1 for c in report.chats for r in c.push_log if r.late) > 0
    assert t.alias_switches > 0 and t.other_client_refreshes > 0
    assert t.pushes_rejected == 0 and t.refreshes_ok > 0
    decoded = msgspec.json.decode(report.to_json())
    assert decoded["totals"]["refreshes_alias_error"] == t.refreshes_alias_error


def test_cli_noise_options(receiver: tuple[Receiver, str], capsys: pytest.CaptureFixture[str]) -> None:
    recv, push_url = receiver
    argv = ["--push-url", push_url, "--chat-port", "0", "--chats", "2", "--events", "4", "--rate", "0"]
    argv += ["--mode", "reliable", "--flex-secure-key", "1", "--app-dbid", "1", "--settle", "0.5"]
    argv += ["--late-rate", "1", "--late-delay-ms", "20", "--alias-switch", "1", "--ahead-rate", "1"]
    argv += ["--no-require-alias", "--json"]
    main(argv)  # nothing refreshes here, so the run does not settle: only the options matter
    report = json.loads(capsys.readouterr().out)
    totals = report["totals"]
    assert totals["late"] == totals["pushes_sent"] > 0 and totals["alias_switches"] > 0
    assert totals["other_client_refreshes"] > 0
    assert all(c["flex_app_dbid"] for c in report["chats"])
    assert all("app-dbid" in t for t in recv.triggers())
