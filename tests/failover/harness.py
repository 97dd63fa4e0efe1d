"""The failover harness: a primary, one replica and three Sentinels (tests/sentinel_cluster.py, real
processes on loopback) with fast failover settings, and the faults a failover test injects into them.

    with failover_cluster(tmp_path, replicas=1) as ha:   # down-after 500 ms, failover-timeout 2 s
        env = ha.env()                          # REDIS_SENTINELS, REDIS_SENTINEL_MASTER, REDIS_URL
        old = ha.kill_primary()                 # SIGKILL: a crash, the append-only file not flushed
        promotion = ha.wait_for_promotion(old)  # polls SENTINEL get-master-addr-by-name (majority)
        first_200_within(push_url, 5.0, promotion.promoted_at)   # the ingress is back, or fail
        ha.restart_as_replica(old)              # started again: Sentinel turns it into a replica
        ha.freeze(node); ha.thaw(node)          # SIGSTOP / SIGCONT: the split below
        ha.wait_demoted(node)                   # node replicates the primary the Sentinels name
        side = Side("a", ingress_url); side.push(); side.kept(client)  # one-event payload pushes

The split. A real partition puts the primary and some clients on one side, the Sentinels and the
replica on the other; the Sentinels promote the replica while the old primary, unaware, keeps taking
writes from the clients that still reach it, and every one of those writes is discarded when the
partition heals and Sentinel makes it a replica (it resynchronises from the new primary). Loopback has
no partitions to offer without root, so the harness freezes the old primary with SIGSTOP for longer
than `down-after-milliseconds`: the Sentinels see it silent and fail over exactly as across a split.
Then SIGCONT: it resumes still believing it is the primary, and the clients holding connections to it
(or configured with its address) are on its side of the split until Sentinel demotes it, which Sentinel
does only after the instance has reported the wrong role for 8 s (SENTINEL_PUBLISH_PERIOD * 4 in
sentinel.c). That window is the split, and real: the same redis-server, taking the same writes, thrown
away the same way. `min-replicas-to-write 1` (with `min-replicas-max-lag`) makes a primary that has
lost its replica refuse writes (NOREPLICAS) instead, so the ingress answers 503 there; the price is
that a primary whose only replica is gone refuses too, hence two replicas in that test.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest
import redis

from shared import keys
from tests.sentinel_cluster import Node, SentinelCluster

# Fast failover: a primary silent for 500 ms is subjectively down; a failover attempt that stalls is
# abandoned after 2 s (and Sentinel waits twice that before trying the same master again).
DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 2000
SENTINELS = 3
MISSING = (
    "install Debian's redis-server and redis-sentinel packages (apt-get install redis-server redis-sentinel)"
)
WAKEUP_PROBE = b'{"deviceId":"failover-probe","message":"probe"}'


def require_binaries() -> None:
    """The failover tests run Debian's binaries; without them they fail (never skip) saying so."""
    if not (shutil.which("redis-server") and shutil.which("redis-sentinel")):
        pytest.fail(MISSING, pytrace=False)


@dataclass(frozen=True)
class Promotion:
    """A failover as the test saw it: the old and the promoted primary, when the fault hit and when a
    majority of the Sentinels first named the new primary (time.monotonic())."""

    old: Node
    new: Node
    fault_at: float
    promoted_at: float

    @property
    def failover_s(self) -> float:
        return self.promoted_at - self.fault_at


class Failover:
    """A started SentinelCluster and the faults a test injects into it."""

    def __init__(self, cluster: SentinelCluster) -> None:
        self.cluster = cluster
        self.fault_at = 0.0

    def env(self, **extra: str) -> dict[str, str]:
        """The relay's variables: the Sentinels (REDIS_URL names no node; only its db applies)."""
        return {**self.cluster.env(), **extra}

    def primary(self) -> Node:
        """The node a majority of the Sentinels name now."""
        port = self.named_port()
        if port is None:
            raise AssertionError("the Sentinels do not agree on a primary")
        return self.cluster.node_at(port)

    def client(self) -> redis.Redis:
        """A direct client of the current primary, for the test's own reads."""
        return self.primary().client()

    def named_port(self) -> int | None:
        """The primary's port named by a majority of the Sentinels, or None while they disagree."""
        votes: dict[int, int] = {}
        for sentinel in self.cluster.sentinels:
            if not sentinel.running():
                continue
            try:
                with sentinel.client() as client:
                    found = client.sentinel_get_master_addr_by_name(self.cluster.master)
            except (redis.RedisError, OSError):
                continue
            if found:
                port = int(found[1])
                votes[port] = votes.get(port, 0) + 1
        return next((port for port, n in votes.items() if n > SENTINELS // 2), None)

    def kill_primary(self) -> Node:
        """SIGKILL the current primary: a crash (nothing flushed, connections reset)."""
        old = self.primary()
        self.fault_at = time.monotonic()
        old.kill()
        return old

    def freeze(self, node: Node) -> None:
        """SIGSTOP: the node holds its connections and answers nothing (the split's first half)."""
        self.fault_at = time.monotonic()
        node.pause()

    def thaw(self, node: Node) -> None:
        """SIGCONT: the node resumes, still believing it is the primary, until Sentinel demotes it."""
        node.resume()

    def wait_for_promotion(self, old: Node, timeout_s: float = 30.0) -> Promotion:
        """Poll the Sentinels (SENTINEL get-master-addr-by-name) until a majority name another node
        and that node reports itself a master; returns when, as the test saw it."""
        deadline = time.monotonic() + timeout_s
        while True:
            port = self.named_port()
            if port is not None and port != old.port:
                new = self.cluster.node_at(port)
                if _role(new) == "master":
                    return Promotion(old, new, self.fault_at, time.monotonic())
            if time.monotonic() > deadline:
                raise AssertionError(f"no replica promoted within {timeout_s} s of losing {old.port}")
            time.sleep(0.02)

    def restart_as_replica(self, old: Node, timeout_s: float = 40.0) -> float:
        """Start a crashed primary again from its own config file: it comes back believing it is the
        primary (its append-only file loaded), and the Sentinels, who know better, make it a replica of
        the new primary (after it has reported the wrong role for 8 s). Returns the seconds that took."""
        started = time.monotonic()
        old.start()
        self.wait_demoted(old, timeout_s)
        return time.monotonic() - started

    def wait_demoted(self, node: Node, timeout_s: float = 40.0) -> None:
        """`node` replicates the primary the Sentinels name, its link up (the resync done)."""
        deadline = time.monotonic() + timeout_s
        while True:
            port = self.named_port()
            try:
                info = node.info()
            except (redis.RedisError, OSError):
                info = {}
            linked = info.get("role") == "slave" and info.get("master_link_status") == "up"
            if linked and port is not None and int(str(info.get("master_port"))) == port != node.port:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"node {node.port} not a replica of the primary within {timeout_s} s")
            time.sleep(0.05)


def _role(node: Node) -> str:
    try:
        return str(node.info().get("role"))
    except (redis.RedisError, OSError):
        return ""


@contextmanager
def failover_cluster(
    directory: Path, replicas: int = 1, redis_config: tuple[str, ...] = ()
) -> Iterator[Failover]:
    """A primary, `replicas` replicas and three Sentinels with the fast failover settings above; every
    data node with its append-only file on (fsync every second, the README's recommendation)."""
    require_binaries()
    cluster = SentinelCluster(
        directory,
        sentinels=SENTINELS,
        replicas=replicas,
        down_after_ms=DOWN_AFTER_MS,
        failover_timeout_ms=FAILOVER_TIMEOUT_MS,
        redis_config=("appendonly yes", "appendfsync everysec", *redis_config),
    )
    with cluster:
        yield Failover(cluster)


def first_200_within(push_url: str, deadline_s: float, since: float) -> float:
    """POST a wake-up push until one is answered 200, at most until `since + deadline_s`
    (time.monotonic()); returns the seconds from `since` to that 200. The deadline is the promise
    under test (the ingress recovers within 5 s of the promotion), checked as an observable one."""
    with httpx.Client(timeout=1.0) as http:
        while True:
            try:
                if http.post(push_url, content=WAKEUP_PROBE).status_code == 200:
                    return time.monotonic() - since
            except httpx.HTTPError:
                pass
            if time.monotonic() > since + deadline_s:
                raise AssertionError(f"no push answered 200 within {deadline_s} s of the promotion")
            time.sleep(0.02)


def payload_push(session_id: str, index: int) -> bytes:
    """A payload push carrying one agent message, transcript index `index`."""
    event = {
        "index": index,
        "type": "Message",
        "text": f"m{index}",
        "from": {"nickname": "Ann", "type": "Agent"},
    }
    message = {"messages": [event], "chatId": session_id, "chatEnded": False, "nextPosition": index + 1}
    return msgspec.json.encode({"deviceId": f"dev-{session_id}", "message": message})


class Side:
    """A GMS node posting one-event payload pushes of one chat of its own to one ingress, back to back,
    recording each answer; what the primary kept is read back from the chat's staged events (the
    tests that use it run no worker, so nothing is released)."""

    def __init__(self, name: str, base_url: str) -> None:
        self.session_id = f"failover-{name}"
        self.url = f"{base_url}/push"
        self.http = httpx.Client(timeout=2.0)
        self.next_index = 1
        self.acked: list[int] = []
        self.answers: list[tuple[float, int]] = []  # (time.monotonic() sent, HTTP status or 0)

    def push(self) -> int:
        index = self.next_index
        self.next_index += 1
        sent = time.monotonic()
        try:
            status = self.http.post(self.url, content=payload_push(self.session_id, index)).status_code
        except httpx.HTTPError:
            status = 0
        self.answers.append((sent, status))
        if status == 200:
            self.acked.append(index)
        return status

    def kept(self, client: redis.Redis) -> set[int]:
        """The indexes `client`'s Redis holds for this chat."""
        return {int(i) for i in client.hkeys(keys.staged(self.session_id))}

    def statuses(self, since: float, until: float = float("inf")) -> list[int]:
        return [status for at, status in self.answers if since <= at < until]

    def close(self) -> None:
        self.http.close()
