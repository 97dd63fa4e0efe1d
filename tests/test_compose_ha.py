"""The compose `ha` profile: a replica of Redis and three Sentinels that the relay follows.

Checked without Docker: the compose file as YAML (its compose-spec validity: test_deploy_files.py), and
the profile's own shell entrypoints run for real with `sh`, `/data` moved to a temporary directory, and
the configuration a Sentinel container writes given to a real redis-sentinel on loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.redis_server import RedisServer, free_port
from shared.settings import Settings, load_settings
from tests.test_deploy_files import ENV_EXAMPLE, README, argv, pairs, resolved

ROOT = Path(__file__).resolve().parent.parent
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
NODES = ("redis", "redis-replica")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    found = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert isinstance(found, dict)
    return found


def entrypoint_script(service: dict[str, Any], data_dir: Path) -> str:
    """The `sh -c` script of a service's entrypoint as compose hands it over (`$$` is a literal `$`),
    writing into `data_dir` instead of the container's /data."""
    entrypoint = service["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"], entrypoint
    return str(entrypoint[2]).replace("$$", "$").replace("/data/", f"{data_dir}/")


def run_entrypoint(service: dict[str, Any], data_dir: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run the entrypoint with a stand-in `docker-entrypoint.sh` that records what it would start."""
    bin_dir = data_dir / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "docker-entrypoint.sh"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    command = [str(c) for c in service.get("command", [])]
    done = subprocess.run(
        ["sh", "-c", entrypoint_script(service, data_dir), *service["entrypoint"][3:], *command],
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.splitlines()


def test_the_profile_adds_a_replica_and_three_sentinels(services: dict[str, dict[str, Any]]) -> None:
    ha = {name for name, service in services.items() if "ha" in service.get("profiles", [])}
    assert ha == {"redis-replica", *SENTINELS}
    assert "profiles" not in services["redis"], "the primary is the stack's own Redis"
    volumes = {
        name: [v for v in services[name]["volumes"] if v.endswith(":/data")] for name in ha | {"redis"}
    }
    assert all(len(v) == 1 for v in volumes.values()), "every node and Sentinel keeps /data on a volume"
    assert len({v[0] for v in volumes.values()}) == len(volumes), "each its own"


@pytest.mark.parametrize("name", NODES)
def test_a_redis_node_keeps_its_role_in_the_file_sentinel_rewrites(
    services: dict[str, dict[str, Any]], name: str, tmp_path: Path
) -> None:
    """A role on the command line would come back at every restart: a promoted replica restarted as
    `--replicaof redis` would resynchronise from the stale former primary, losing what it took."""
    args = argv(services[name])
    assert args[:2] == ["redis-server", "/data/redis.conf"]
    assert not {"--replicaof", "--slaveof"} & set(args)
    assert run_entrypoint(services[name], tmp_path) == args, "then the command, unchanged"
    seeded = (tmp_path / "redis.conf").read_text()
    assert seeded.strip() == ("replicaof redis 6379" if name == "redis-replica" else "")
    (tmp_path / "redis.conf").write_text("replicaof redis-replica 6379\n")  # as Sentinel rewrote it
    run_entrypoint(services[name], tmp_path)
    assert (tmp_path / "redis.conf").read_text() == "replicaof redis-replica 6379\n", "seeded only once"


def test_either_node_holds_the_primarys_guarantees(services: dict[str, dict[str, Any]]) -> None:
    """Either may be the primary: the same append-only file, eviction and split-brain options; each
    announces its own service name, which the relay resolves on the compose network."""
    primary, replica = (pairs(argv(services[name])) for name in NODES)
    assert ("--replica-announce-ip", "redis") in primary and (
        "--replica-announce-ip",
        "redis-replica",
    ) in replica
    same = {p for p in primary if p[0] != "--replica-announce-ip"}
    assert same <= replica
    assert {("--appendonly", "yes"), ("--maxmemory-policy", "noeviction")} <= same
    defaults = {flag: resolved(value, {}) for flag, value in same if flag.startswith("--min-replicas")}
    assert defaults == {"--min-replicas-to-write": "0", "--min-replicas-max-lag": "10"}, "off unless set"


def documented_sentinels() -> str:
    """The REDIS_SENTINELS value the README and .env.example tell an operator to set for `ha`."""
    text = README.read_text() + ENV_EXAMPLE.read_text()
    values = {str(v) for v in re.findall(r"REDIS_SENTINELS=([^\s`)]+)", text)}
    assert len(values) == 1, values
    return values.pop()


def test_the_documented_sentinels_are_the_profiles(services: dict[str, dict[str, Any]]) -> None:
    settings = load_settings({"REDIS_SENTINELS": documented_sentinels()})
    assert settings.redis_sentinels == tuple((name, 26379) for name in SENTINELS)
    for name in SENTINELS:
        env = services[name]["environment"]
        assert env["SENTINEL_NAME"] == name, "announced under the name the relay resolves"
        assert resolved(env["MASTER"], {}) == Settings().redis_sentinel_master
        assert env["SENTINEL_PASSWORD"] == "${REDIS_SENTINEL_PASSWORD:-}", "the relay's variable"


def test_the_relay_waits_for_the_sentinels_only_when_they_run(services: dict[str, dict[str, Any]]) -> None:
    for name in ("ingress", "worker", "rq-dashboard"):
        depends_on = services[name]["depends_on"]
        for sentinel in SENTINELS:
            assert depends_on[sentinel] == {"condition": "service_healthy", "required": False}, name
    relay = services["worker"]["environment"]
    dashboard = services["rq-dashboard"]["environment"]
    for var in ("REDIS_URL", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"):
        assert dashboard[var] == relay[var], f"rq-dashboard finds Redis as the relay does: {var}"


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "primary", appendonly=False) as server:
        yield server


@pytest.mark.parametrize("password", ["", "sentinel-secret"])
def test_a_sentinel_container_config_runs_in_redis_sentinel(
    services: dict[str, dict[str, Any]], primary: RedisServer, tmp_path: Path, password: str
) -> None:
    """The file sentinel-1 writes, with `redis` pointed at a real loopback Redis and its port moved:
    a real redis-sentinel accepts it, names the primary, and its healthcheck passes."""
    sentinel = services["sentinel-1"]
    env = {"SENTINEL_NAME": "sentinel-1", "MASTER": "mymaster", "SENTINEL_PASSWORD": password}
    started = run_entrypoint(sentinel, tmp_path, env)
    assert started == ["redis-server", f"{tmp_path}/sentinel.conf", "--sentinel"]
    config = (tmp_path / "sentinel.conf").read_text()
    assert "sentinel monitor mymaster redis 6379 2" in config.splitlines()
    assert ("requirepass sentinel-secret" in config) == bool(password)
    port = free_port()
    local = config.replace("monitor mymaster redis 6379", f"monitor mymaster 127.0.0.1 {primary.port}")
    local = local.replace("port 26379", f"port {port}").replace(
        "announce-ip sentinel-1", "announce-ip 127.0.0.1"
    )
    (tmp_path / "local.conf").write_text(local)
    binary = shutil.which("redis-sentinel")
    assert binary, "needs Debian's redis-sentinel"
    process = subprocess.Popen([binary, str(tmp_path / "local.conf")], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, password=password or None, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                found: Any = client.sentinel_get_master_addr_by_name("mymaster")
                host, named_port = found
                if (host, int(named_port)) == (b"127.0.0.1", primary.port):
                    break
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "the Sentinel never named the primary"
            time.sleep(0.05)
        client.close()
        check = str(sentinel["healthcheck"]["test"][1]).replace("$$", "$").replace("26379", str(port))
        healthy = subprocess.run(["sh", "-c", check], env={**os.environ, **env}, timeout=30)
        assert healthy.returncode == 0
    finally:
        process.terminate()
        process.wait(10)
