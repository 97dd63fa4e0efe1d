"""Deployment files: docker-compose.yml, Dockerfile and .dockerignore keep what the README promises.

No Docker engine is needed: the compose file is read as YAML (skipped without PyYAML) and checked
against the compose-spec schema when check-jsonschema is installed; commands are parsed by the CLI.
Every setting of the README's configuration tables reaches the ingress and the workers with the
relay's own default, as `.env.example` lists it (the `monitoring` profile: test_monitoring.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from gms_relay.cli import build_parser
from ingress.server import GRACEFUL_SHUTDOWN_S
from shared import keys
from shared.redis_server import RedisServer
from shared.settings import Settings, load_settings
from simulator.cli import _parser as simulator_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CI_RUN = ROOT / ".ci" / "run"
README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"

# `${...}` not escaped as `$${...}`.
_INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<body>[^}]*)\}")
_DEFAULTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*:-")
_REQUIRED = re.compile(r"^(?P<var>[A-Za-z_][A-Za-z0-9_]*):\?(?P<why>.*)$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_BODY = re.compile(r"(?P<var>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:-|:\?)(?P<rest>.*)", re.S)
_ENV_LINE = re.compile(r"^(?P<commented>#\s*)?(?P<var>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")
# Tools a python:3.11-slim image does not have.
_MISSING_IN_SLIM = ("curl", "wget", "pgrep", "pidof")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


def duration_s(value: str) -> float:
    """A compose duration such as `75s` or `1m15s`, in seconds."""
    parts = _DURATION_PART.findall(value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a compose duration: {value!r}"
    return sum(float(n) * _UNITS_S[u] for n, u in parts)


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return list(command) if isinstance(command, list) else shlex.split(command)


def pairs(args: list[str]) -> set[tuple[str, str]]:
    return set(itertools.pairwise(args))


def healthcheck_code(service: dict[str, Any]) -> str:
    """The Python source of a `["CMD", "python", "-c", code]` healthcheck."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    code = test[3]
    assert isinstance(code, str)
    return code


def interpolations() -> list[str]:
    """What stands inside each `${...}` of the compose file."""
    return [m["body"] for m in _INTERPOLATION.finditer(COMPOSE.read_text())]


def readme_settings() -> list[str]:
    """Every variable in the first column of the README's configuration tables (## Configuration)."""
    text = README.read_text()
    start = text.index("\n## Configuration")
    rows = [
        line for line in text[start : text.index("\n## ", start + 1)].splitlines() if line.startswith("| `")
    ]
    names = [name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1])]
    assert len(names) > 30, "the README's configuration tables moved"
    return names


def resolved(value: str, given: dict[str, str]) -> str:
    """A compose value as compose interpolates it when only `given` is set (in the shell or `.env`)."""

    def one(match: re.Match[str]) -> str:
        body = _BODY.fullmatch(match["body"])
        assert body and (given.get(body["var"]) or body["op"] == ":-"), f"${{{match['body']}}}"
        return given.get(body["var"]) or body["rest"]

    return _INTERPOLATION.sub(one, value)


def relay_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    image = services["worker"]["image"]
    return {name: s for name, s in services.items() if s.get("image") == image}


def test_redis_keeps_an_append_only_file_and_never_evicts(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    redis_service = services["redis"]
    args = argv(redis_service)
    assert args[0] == "redis-server"
    assert {("--appendonly", "yes"), ("--appendfsync", "everysec"), ("--maxmemory-policy", "noeviction")} <= (
        pairs(args)
    )
    # Data on a named volume, so `docker compose down` / image upgrades keep queued work.
    volumes = [v for v in redis_service["volumes"] if isinstance(v, str) and v.endswith(":/data")]
    assert len(volumes) == 1
    assert volumes[0].split(":")[0] in compose["volumes"]
    assert "ports" not in redis_service, "Redis stays on the compose network"


def test_every_service_has_a_healthcheck_that_works_in_its_image(services: dict[str, dict[str, Any]]) -> None:
    relay = relay_services(services)
    assert {"ingress", "worker", "rq-dashboard", "simulator"} <= relay.keys()
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        if name in relay:
            joined = " ".join(test[1:])
            assert not any(tool in joined for tool in _MISSING_IN_SLIM), f"{name}: {joined}"
            compile(healthcheck_code(service), f"<{name} healthcheck>", "exec")


def test_dependencies_wait_until_healthy(services: dict[str, dict[str, Any]]) -> None:
    assert "redis" in services["ingress"]["depends_on"]
    assert "redis" in services["worker"]["depends_on"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must name a condition"
        for dependency, spec in depends_on.items():
            assert dependency in services
            assert spec["condition"] == "service_healthy", f"{name} -> {dependency}"


def test_workers_scale_with_compose(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    for fixed in ("container_name", "hostname", "ports"):
        assert fixed not in worker, f"`--scale worker=N` needs no fixed {fixed}"


def test_stop_grace_periods_outlast_the_longest_work(services: dict[str, dict[str, Any]]) -> None:
    longest_job_s = max(Settings().drain_job_timeout_s, Settings().webhook_timeout_ms // 1000 + 10)
    assert duration_s(services["worker"]["stop_grace_period"]) > longest_job_s >= 60
    assert duration_s(services["ingress"]["stop_grace_period"]) > GRACEFUL_SHUTDOWN_S


def test_variables_are_required_loudly_or_defaulted() -> None:
    bodies = interpolations()
    assert bodies
    for body in bodies:
        required = _REQUIRED.match(body)
        if required:
            assert required["why"].strip(), f"${{{body}}} needs an explanation after :?"
        else:
            assert _DEFAULTED.match(body), f"${{{body}}}: write ${{VAR:?why}} or ${{VAR:-default}}"


def test_required_variables(services: dict[str, dict[str, Any]]) -> None:
    assert services["worker"]["environment"]["GMS_URL"].startswith("${GMS_URL:?")
    dashboard_env = services["rq-dashboard"]["environment"]
    for var in ("RQ_DASHBOARD_USERNAME", "RQ_DASHBOARD_PASSWORD"):
        assert dashboard_env[var].startswith(f"${{{var}:?"), "every dashboard endpoint needs basic auth"
    # Optional in the contract: never required (PUSH_TOKEN is: tests/test_deploy_security.py).
    for var in ("API_TOKEN", "WEBHOOK_URL", "WEBHOOK_SECRET", "PUSH_MAX_BYTES", "LOG_LEVEL"):
        assert f"${{{var}:?" not in COMPOSE.read_text(), var


def test_ci_config_check_sets_every_required_variable() -> None:
    """Compose interpolates every service (profiles too) before `config` succeeds."""
    lines = [line for line in CI_RUN.read_text().splitlines() if "docker compose config" in line]
    assert lines, ".ci/run no longer checks the compose file"
    words = shlex.split(lines[0].split("docker compose config")[0])
    provided = {w.split("=", 1)[0] for w in words if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)}
    required = {m["var"] for m in map(_REQUIRED.match, interpolations()) if m}
    assert required <= provided, f".ci/run must set {sorted(required - provided)} for `docker compose config`"


def parse_command(name: str, service: dict[str, Any]) -> argparse.Namespace:
    """A relay service's command as the CLI parses it: `gms-relay ...` or `python -m simulator ...`."""
    args = argv(service)
    try:
        if args[:3] == ["python", "-m", "simulator"]:
            return simulator_parser().parse_args(args[3:])
        assert args[0] == "gms-relay", f"{name}: run the relay through its console script"
        namespace = build_parser().parse_args(args[1:])
        if namespace.command == "simulate":
            return simulator_parser().parse_args(namespace.rest)
        return namespace
    except SystemExit:
        pytest.fail(f"{name}: `{shlex.join(args)}` is not accepted by the CLI")


def test_relay_commands_are_valid_cli_invocations(services: dict[str, dict[str, Any]]) -> None:
    ingress = parse_command("ingress", services["ingress"])
    assert ingress.command == "ingress" and ingress.host == "0.0.0.0"
    worker = parse_command("worker", services["worker"])
    assert worker.command == "worker" and not worker.burst
    port = str(ingress.port)
    assert f"{port}:{port}" in services["ingress"]["ports"]
    assert f"127.0.0.1:{port}/readyz" in healthcheck_code(services["ingress"])


def test_simulator_is_opt_in_and_drives_the_stack(services: dict[str, dict[str, Any]]) -> None:
    simulator = services["simulator"]
    assert simulator["profiles"] == ["simulator"]
    args = parse_command("simulator", simulator)
    assert args.push_url == "http://ingress:8080/push" and args.api_url == "http://ingress:8080"
    assert args.forever
    # Reachable from the workers' containers, at the GMS_URL the operator sets for this profile.
    assert args.chat_host == "0.0.0.0"
    assert f"http://simulator:{args.chat_port}" in " ".join(simulator["entrypoint"])
    assert set(simulator["environment"]) >= {"GMS_URL", "API_TOKEN", "PUSH_TOKEN"}


def test_dashboard_reads_json_jobs_with_its_dependencies_installed(
    services: dict[str, dict[str, Any]],
) -> None:
    dashboard = services["rq-dashboard"]
    args = argv(dashboard)
    # The relay's launcher: rq-dashboard reading the JSON jobs on every page, deleting disabled.
    assert args[:3] == ["python", "-m", "gms_relay.dashboard"] and "--disable-delete" in args
    assert ("--port", "9181") in pairs(args) and "9181:9181" in dashboard["ports"]
    assert dashboard["image"] == services["worker"]["image"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.match(r"^six\b", req) for req in extras["dashboard"])
    assert any(re.match(r"^rq-dashboard\b", req) for req in extras["dashboard"])
    assert "[dashboard]" in " ".join(_instructions("RUN"))


def _dockerfile_lines() -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, rest = stripped.partition(" ")
            yield instruction.upper(), rest.strip()


def _instructions(name: str, final_stage_only: bool = False) -> list[str]:
    lines = list(_dockerfile_lines())
    if final_stage_only:
        last_from = max(i for i, (instruction, _) in enumerate(lines) if instruction == "FROM")
        lines = lines[last_from:]
    return [rest for instruction, rest in lines if instruction == name]


def test_dockerfile_builds_one_slim_non_root_image() -> None:
    stages = _instructions("FROM")
    assert len(stages) >= 2, "multi-stage: build a wheel, then copy only the venv"
    users = _instructions("USER", final_stage_only=True)
    assert users, "the runtime stage must switch to an unprivileged user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    env = " ".join(_instructions("ENV", final_stage_only=True))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    assert "8080" in _instructions("EXPOSE")
    assert _instructions("CMD")[-1] == '["gms-relay", "ingress"]'
    assert any("slim" in arg for arg in _instructions("ARG") + stages)


def test_dockerignore_keeps_the_build_inputs() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".git", ".venv", ".gms-relay", ".env"} <= ignored
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert not ({"pyproject.toml", "README.md"} | packages) & ignored


def test_the_installed_packages_carry_their_data_files() -> None:
    """The image installs a wheel, not the source tree: every file the packages read (the Lua
    scripts) must be matched by `package-data`, whose globs are relative to the package directory."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data: dict[str, list[str]] = setuptools.get("package-data", {})
    missing = []
    for top in (p.rstrip("*") for p in setuptools["packages"]["find"]["include"]):
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            if path.name == "py.typed":  # setuptools >= 69 ships it without being asked
                continue
            package = next(d for d in path.parents if (d / "__init__.py").exists())
            name = ".".join(package.relative_to(ROOT).parts)
            patterns = package_data.get(name, []) + package_data.get("*", [])
            if not any(path in set(package.glob(pattern)) for pattern in patterns):
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data]): {missing}"


def test_every_documented_setting_reaches_the_ingress_and_the_workers(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("ingress", "worker"):
        missing = [var for var in readme_settings() if var not in services[name]["environment"]]
        assert not missing, f"{name} is not given {missing}"
    assert services["ingress"]["environment"] == services["worker"]["environment"], "one relay environment"


def test_compose_defaults_are_the_relays_own(services: dict[str, dict[str, Any]]) -> None:
    """With only the required variables set, the processes run with exactly the relay's defaults."""
    given = {"GMS_URL": "http://gms.example:8080", "PUSH_TOKEN": "a-push-token"}
    env = {var: resolved(str(value), given) for var, value in services["worker"]["environment"].items()}
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    compose, relay = load_settings(env), load_settings({"REDIS_URL": env["REDIS_URL"], **given})
    assert msgspec.structs.asdict(compose) == msgspec.structs.asdict(relay)


def test_env_example_lists_every_variable_with_the_compose_default(
    services: dict[str, dict[str, Any]],
) -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    example = {m["var"]: (bool(m["commented"]), m["value"]) for m in map(_ENV_LINE.match, lines) if m}
    fixed = {var for var, value in services["worker"]["environment"].items() if "${" not in str(value)}
    assert [var for var in readme_settings() if var not in example and var not in fixed] == []
    bodies = [b for b in interpolations() if _BODY.fullmatch(b)]
    assert set(example) == {b.partition(":")[0] for b in bodies}, (
        "one line per variable the compose file reads"
    )
    for body in map(_BODY.fullmatch, bodies):
        assert body
        commented, value = example[body["var"]]
        if body["op"] == ":?":
            assert not commented, f"{body['var']} is required: .env.example sets it"
        else:
            assert not commented or value == body["rest"], (
                f".env.example: {body['var']}={value}, compose {body[0]}"
            )


@pytest.mark.skipif(importlib.util.find_spec("check_jsonschema") is None, reason="check-jsonschema missing")
def test_compose_file_matches_the_compose_spec() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_healthcheck_sees_only_this_hosts_worker(
    services: dict[str, dict[str, Any]], redis_server: RedisServer
) -> None:
    from rq import Queue, SimpleWorker

    code = healthcheck_code(services["worker"])
    connection = redis.Redis.from_url(redis_server.url)
    connection.flushall()
    env = {**os.environ, "REDIS_URL": redis_server.url}

    def healthy() -> bool:
        return subprocess.run([sys.executable, "-c", code], env=env, timeout=30).returncode == 0

    def worker() -> SimpleWorker:
        return SimpleWorker([Queue(keys.DRAIN_QUEUE, connection=connection)], connection=connection)

    assert not healthy()
    elsewhere = worker()
    elsewhere.hostname = "another-container"
    elsewhere.register_birth()  # type: ignore[no-untyped-call]
    assert not healthy(), "a worker in another container must not make this one healthy"
    here = worker()
    here.register_birth()  # type: ignore[no-untyped-call]
    assert healthy()
    here.register_death()  # type: ignore[no-untyped-call]
    assert not healthy()
    connection.close()
