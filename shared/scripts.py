"""The relay's Lua scripts: each one's interface declared once, its source built, its calls checked.

Every state change of the pipeline is one Lua call, so each is atomic and costs one round trip. A
script's interface (named arguments with their kinds, an optional variadic rest, what it touches and
returns) is declared here once: the Lua header that binds and validates the arguments is generated
from it, and Python callers pass the same names (`scripts["commit"](events, sid=..., token=...)`), so
no list of positions is kept by hand on either side.

Argument kinds: `text` (any string), `id` (non-empty), `int` (a finite integer), `int?` (an integer
or '' for none), `flag` ('1' or ''; Lua gets a boolean), `a|b|c` (one of these words). Python values:
None and False pass as '', True as '1'. Keys are not passed as KEYS: most names come from stored
state (a device's current chat, the members of a due set), so the relay needs a standalone Redis or a
Sentinel-managed primary, not Cluster (RQ does not support Cluster either). Each script lists the key
families of shared/keys.py it touches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from shared.lua_prelude import prelude
from shared.settings import Settings

Value = str | bytes | int
Arg = Value | None


@dataclass(frozen=True)
class Interface:
    """One script's declared interface."""

    name: str
    signature: str  # "name:kind name:kind ..." (kind `text` when omitted)
    rest: str = ""  # what the variadic ARGV after the named ones carries ('' none: exact arity)
    touches: tuple[str, ...] = ()
    returns: str = ""
    parts: tuple[str, ...] = ("core",)  # helper files it needs, before its own
    args: tuple[str, ...] = field(init=False)
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.signature.split()))
        object.__setattr__(self, "names", tuple(a.partition(":")[0] for a in self.args))

    def argv(
        self, named: Mapping[str, Arg], rest: Sequence[str | bytes | int] = ()
    ) -> list[str | bytes | int]:
        """ARGV for a call: the named arguments in declared order, then `rest`."""
        if len(named) != len(self.names) or (rest and not self.rest):
            raise TypeError(f"{self.name}: {self._mismatch(named, rest)}")
        try:
            values = [named[n] for n in self.names]
        except KeyError:
            raise TypeError(f"{self.name}: {self._mismatch(named, rest)}") from None
        out: list[Value] = ["" if v is None or v is False else "1" if v is True else v for v in values]
        out.extend(rest)
        return out

    def _mismatch(self, named: Mapping[str, Arg], rest: Sequence[object]) -> str:
        missing = sorted(set(self.names) - set(named))
        unexpected = sorted(set(named) - set(self.names))
        extra = "a variadic rest it does not take" if rest and not self.rest else ""
        return "; ".join(
            p
            for p in (
                f"missing {missing}" if missing else "",
                f"unexpected {unexpected}" if unexpected else "",
                extra,
            )
            if p
        )

    def header(self) -> str:
        """Lua that binds each named argument to a local and refuses malformed calls before any write."""
        lines = [f"-- {self.name}({', '.join(self.args)}){f' ... {self.rest}' if self.rest else ''}"]
        if self.touches:
            lines.append(f"-- touches: {', '.join(self.touches)}")
        if self.returns:
            lines.append(f"-- returns: {self.returns}")
        lines.append("-- (generated from its Interface in shared/scripts.py)")
        checks = [f"#ARGV {'>=' if self.rest else '=='} {len(self.args)}"]
        for position, arg in enumerate(self.args, start=1):
            name, _, kind = arg.partition(":")
            raw = f"ARGV[{position}]"
            if kind == "int":
                lines.append(f"local {name} = int({raw})")
                checks.append(name)
            elif kind == "int?":
                lines.append(f"local {name} = int({raw})")
                checks.append(f"({raw} == '' or {name})")
            elif kind == "flag":
                lines.append(f"local {name} = {raw} == '1'")
                checks.append(f"({raw} == '1' or {raw} == '')")
            elif kind == "id":
                lines.append(f"local {name} = {raw}")
                checks.append(f"{name} ~= ''")
            elif "|" in kind:
                lines.append(f"local {name} = {raw}")
                checks.append("(" + " or ".join(f"{name} == '{word}'" for word in kind.split("|")) + ")")
            elif kind in ("", "text"):
                lines.append(f"local {name} = {raw}")
            else:
                raise ValueError(f"{self.name}: unknown argument kind {kind!r}")
        if self.rest:
            lines.append(f"local REST = {len(self.args) + 1}  -- first ARGV of the rest")
        lines.append(f"if not ({' and '.join(checks)}) then return bad_args('{self.name}') end")
        return "\n".join(lines)


_CHAT = ("session", "credentials", "device", "ended", "DIRTY", "DRAIN_QUEUED", "rq_job", "rq_queue")
_SINKS = ("outbox", "inflight", "delivery", "DELIVERIES", "stream")
INTERFACES = {
    i.name: i
    for i in (
        Interface(
            "ingest_trigger",
            "device:id sid now_ms:int job_id:id position:int attempt:int user_id secure_key app_dbid",
            touches=(*_CHAT, "lease", "WAKEUPS"),
            returns="queued | covered | ended | wakeup",
            parts=("core", "ingest"),
        ),
        Interface(
            "ingest_payload",
            "device:id sid now_ms:int job_id:id chat_ended:flag alias",
            rest="index, event JSON pairs",
            touches=(*_CHAT, "staged", "lease", "COUNTERS"),
            returns="queued | duplicate | late | ended",
            parts=("core", "ingest"),
        ),
        Interface(
            "ingest_wakeup",
            "device:id now_ms:int job_id:id body",
            touches=(*_CHAT, "WAKEUPS"),
            returns="wakeup | queued (the device has a live chat: it is refreshed)",
            parts=("core", "ingest"),
        ),
        Interface(
            "register",
            "sid:id device:id user_id secure_key alias service now_ms:int job_id:id",
            touches=(*_CHAT, "PARKED"),
            returns="registered | ended",
        ),
        Interface(
            "forget",
            "sid:id",
            touches=("session", "credentials", "staged", "device", "DIRTY", "PARKED"),
            returns="how many keys were deleted",
        ),
        Interface(
            "kick",
            "job_id:id now_ms:int",
            touches=("DRAIN_QUEUED", "rq_job", "rq_queue"),
            returns="1 if a drain job was enqueued",
        ),
        Interface(
            "claim",
            "now_ms:int token:id max:int job_base:id",
            touches=("DIRTY", "lease", "session", "credentials", "staged", "WAKEUPS", *_SINKS),
            returns="{sid, due_ms, state fields, credential fields, staged fields} per claim",
            parts=("core", "fanout"),
        ),
        Interface(
            "commit",
            "sid:id token:id now_ms:int device:id cursor:int final:flag alias end_reason gen"
            " again_at_ms:int? gap_since_ms:int? id_base:id n_events:int",
            rest="n_events (index, type, json) triples, then staged indexes to drop",
            touches=(*_CHAT, "lease", "staged", "PARKED", "COUNTERS", *_SINKS),
            returns="1, or 0 if the lease was lost (fenced)",
            parts=("core", "fanout"),
        ),
        Interface(
            "release",
            "sid:id token:id how:retry|later|park|suspect|drop at_ms:int gen now_ms:int id_base:id alias",
            touches=("lease", "session", "DIRTY", "PARKED", "COUNTERS", *_SINKS),
            returns="retry | later | park | suspect | drop | fenced",
            parts=("core", "fanout"),
        ),
        Interface(
            "take_deliveries",
            "now_ms:int lease_ms:int token:id",
            rest="one capacity per sink",
            touches=("DELIVERIES", "delivery", "sink"),
            returns="{id, sink, sid, body, attempts} per delivery taken",
            parts=("core", "fanout"),
        ),
        Interface(
            "delivery_done",
            "id:id next_id:id now_ms:int",
            touches=("sink", "COUNTERS", *_SINKS),
            returns="1 if the chat's next delivery started",
            parts=("core", "fanout"),
        ),
        Interface(
            "delivery_failed",
            "id:id token now_ms:int retry_at_ms:int? gone:flag",
            touches=("delivery", "DELIVERIES", "sink", "COUNTERS"),
            returns="fenced | retry | parked | dead | gone",
            parts=("core", "fanout"),
        ),
    )
}


def _read(name: str) -> str:
    return resources.files("shared").joinpath("lua", f"{name}.lua").read_text()


@dataclass(frozen=True)
class ScriptSources:
    """Full Lua source of each script: prelude + helper files + generated header + the script body."""

    sources: dict[str, str]

    @classmethod
    def build(cls, settings: Settings) -> ScriptSources:
        head = prelude(settings)
        return cls(
            {
                name: "\n".join([head, *(_read(part) for part in i.parts), i.header(), _read(name)])
                for name, i in INTERFACES.items()
            }
        )

    def register(self, client: Any) -> Scripts:
        """The scripts on a sync redis client (each reloads itself on NOSCRIPT)."""
        return Scripts({name: BoundScript(INTERFACES[name], client.register_script(source))
                        for name, source in self.sources.items()})  # fmt: skip


class BoundScript:
    """One script on one client, called with its named arguments."""

    def __init__(self, interface: Interface, script: Any) -> None:
        self.interface = interface
        self.script = script

    def __call__(self, rest: Sequence[str | bytes | int] = (), /, **named: Arg) -> Any:
        return self.script(args=self.interface.argv(named, rest))

    def raw(self, args: Sequence[str | bytes | int]) -> Any:
        """A call with ARGV as given, unchecked: for tests of the script's own validation."""
        return self.script(args=list(args))


class Scripts:
    """The relay's scripts on one client, by name."""

    def __init__(self, bound: dict[str, BoundScript]) -> None:
        self._bound = bound

    def __getitem__(self, name: str) -> BoundScript:
        return self._bound[name]
