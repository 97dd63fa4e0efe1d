"""What a claim hands a worker: one chat's state, snapshotted in the claim transaction."""

from __future__ import annotations

from dataclasses import dataclass

_CREDENTIALS = ("userId", "secureKey")


def _pairs(flat: list[bytes]) -> dict[str, bytes]:
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}


@dataclass(frozen=True)
class Claim:
    session_id: str
    due_ms: float
    fields: dict[str, str]
    staged: dict[int, bytes]

    @classmethod
    def parse(cls, row: list[object]) -> Claim:
        sid, due, flat_state, flat_creds, flat_staged = row
        assert isinstance(sid, bytes) and isinstance(flat_staged, list)
        assert isinstance(flat_state, list) and isinstance(flat_creds, list)
        # State and credentials live in two keys with two lifetimes; a worker reads them as one, the
        # credentials only from their own key (claim.lua moves those of an earlier version there).
        state = {k: v.decode() for k, v in _pairs(flat_state).items() if k not in _CREDENTIALS}
        fields = state | {k: v.decode() for k, v in _pairs(flat_creds).items()}
        staged = {int(k): v for k, v in _pairs(flat_staged).items()}
        return cls(sid.decode(), float(due), fields, staged)  # type: ignore[arg-type]

    @property
    def device_id(self) -> str | None:
        return self.fields.get("deviceId")

    @property
    def cursor(self) -> int:
        return int(self.fields.get("cursor", "0"))

    @property
    def gen(self) -> str:
        return self.fields.get("gen", "")

    @property
    def retries(self) -> int:
        return int(self.fields.get("retries", "0"))

    @property
    def end(self) -> str | None:
        return self.fields.get("end")

    @property
    def payload_mode(self) -> bool:
        return self.fields.get("mode") == "payload" or bool(self.staged)
