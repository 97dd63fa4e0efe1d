"""The declared script interfaces (shared/scripts.py) and the prelude (shared/lua_prelude.py): the Lua
side binds, checks and names exactly what the Python side declares."""

from __future__ import annotations

from importlib import resources

import pytest
import redis

from shared import keys
from shared.lua_prelude import lua_string, prelude
from shared.scripts import INTERFACES, Interface, ScriptSources
from shared.settings import Settings

# Arguments that satisfy each kind, and one that does not.
GOOD = {"int": "7", "int?": "", "flag": "1", "id": "x", "text": ""}
BAD = {"int": "7.5", "int?": "soon", "flag": "yes", "id": ""}


def _kind(arg: str) -> str:
    return arg.partition(":")[2] or "text"


def test_every_script_file_has_an_interface_and_every_interface_a_file() -> None:
    lua = {f.name.removesuffix(".lua") for f in resources.files("shared").joinpath("lua").iterdir()}
    parts = {part for i in INTERFACES.values() for part in i.parts}
    assert lua == set(INTERFACES) | parts


def test_argv_orders_named_arguments_and_encodes_none_and_flags() -> None:
    commit = INTERFACES["commit"]
    named = dict.fromkeys(commit.names, "v") | {"final": True, "again_at_ms": None, "n_events": 0}
    argv = commit.argv(named, [3, "Message", b"{}"])
    assert argv[: len(commit.names)] == [
        {"final": "1", "again_at_ms": "", "n_events": 0}.get(name, "v") for name in commit.names
    ]
    assert argv[len(commit.names) :] == [3, "Message", b"{}"]
    assert INTERFACES["delivery_failed"].argv(
        {"id": "d", "token": "t", "now_ms": 1, "retry_at_ms": None, "gone": False}
    ) == ["d", "t", 1, "", ""]


@pytest.mark.parametrize(
    "named, problem",
    [
        ({"job_id": "j"}, r"missing \['now_ms'\]"),
        ({"job_id": "j", "now_ms": 1, "when": 2}, r"unexpected \['when'\]"),
        ({"job_id": "j", "nowms": 1}, r"missing \['now_ms'\]; unexpected \['nowms'\]"),
    ],
)
def test_argv_names_what_a_call_gets_wrong(named: dict[str, object], problem: str) -> None:
    with pytest.raises(TypeError, match=f"kick: {problem}"):
        INTERFACES["kick"].argv(named)  # type: ignore[arg-type]


def test_a_rest_is_refused_by_a_script_that_takes_none() -> None:
    with pytest.raises(TypeError, match="variadic rest"):
        INTERFACES["kick"].argv({"job_id": "j", "now_ms": 1}, ["x"])


def test_an_unknown_kind_is_refused_when_the_header_is_built() -> None:
    with pytest.raises(ValueError, match="unknown argument kind 'float'"):
        Interface("bad", "x:float").header()


@pytest.mark.parametrize("name", sorted(INTERFACES))
def test_the_generated_header_refuses_each_malformed_argument_and_the_wrong_arity(
    name: str, redis_client: redis.Redis
) -> None:
    """Against a real Redis: a call that is right but for one argument (or its count) is refused by
    the header, before the script's body runs (a body-less script would return 'ok')."""
    interface = INTERFACES[name]
    source = ScriptSources.build(Settings()).sources[name]
    head = source.split(interface.header(), 1)[0] + interface.header()
    probe = redis_client.register_script(head + "\nreturn 'ok'")
    good = [_kind(a).split("|")[0] if "|" in _kind(a) else GOOD[_kind(a)] for a in interface.args]
    assert probe(args=good) == b"ok"
    for position, arg in enumerate(interface.args):
        kind = _kind(arg)
        bad = BAD.get(kind, "maybe" if "|" in kind else None)
        if bad is None:
            continue
        args = [*good[:position], bad, *good[position + 1 :]]
        with pytest.raises(redis.ResponseError, match=f"gms-relay {name}: malformed arguments"):
            probe(args=args)
    with pytest.raises(redis.ResponseError, match="malformed arguments"):
        probe(args=good[:-1])
    if not interface.rest:
        with pytest.raises(redis.ResponseError, match="malformed arguments"):
            probe(args=[*good, "extra"])


def test_lua_key_functions_and_constants_are_the_python_ones(redis_client: redis.Redis) -> None:
    """Every key name the scripts use comes from shared/keys.py, rendered into the prelude."""
    calls = []
    expected = []
    for name in keys.LUA_FUNCTIONS:
        arity = getattr(keys, name).__code__.co_argcount
        args = ["a:b", "7"][:arity]
        calls.append(f"keys.{name}({', '.join(lua_string(a) for a in args)})")
        expected.append(getattr(keys, name)(*args).encode())
    for name in keys.LUA_CONSTANTS:
        calls.append(name)
        expected.append(getattr(keys, name).encode())
    script = prelude(Settings()) + f"\nreturn {{{', '.join(calls)}}}"
    assert redis_client.eval(script, 0) == expected


def test_lua_string_round_trips_any_bytes(redis_client: redis.Redis) -> None:
    raw = bytes(range(256)) + 'é"\\'.encode()
    assert redis_client.eval(f"return {lua_string(raw)}", 0) == raw


def test_settings_are_baked_into_the_prelude() -> None:
    text = prelude(Settings(lease_ttl_ms=1500, webhook_sink_probe_ms=250, commit_chunk_events=100))
    assert "local CFG_LEASE_TTL_MS = 1500" in text
    assert "local CFG_SINK_PROBE_MS = 250" in text
    assert "local CFG_COMMIT_CHUNK_EVENTS = 100" in text
