"""`gms-relay up --simulate`: the one-command stack, end to end, then a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from shared.redis_server import free_port
from tests.processes import relay_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def processes_mentioning(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry.name))
    return found


def test_up_simulate_delivers_end_to_end_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "fresh-data"
    env = {k: v for k, v in relay_env().items() if k not in ("REDIS_URL", "GMS_URL")}
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gms_relay",
            "up",
            "--simulate",
            "--workers",
            "2",
            "--port",
            str(port),
            "--dashboard-port",
            str(free_port()),
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(up.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: any("embedded Redis at" in line for line in lines), timeout_s=30)
        [redis_url] = re.findall(r"redis://\S+", next(line for line in lines if "embedded Redis" in line))
        client = redis.Redis.from_url(redis_url)
        wait_for(
            lambda: any(line.startswith("webhook chat.events") and "signed ok" in line for line in lines),
            timeout_s=60,
        )
        wait_for(
            lambda: any(client.xlen(key) > 0 for key in client.scan_iter("gms-relay:events:*")), timeout_s=30
        )
        assert (data_dir / "redis").is_dir()
        client.close()
    finally:
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()  # its children die with it (PR_SET_PDEATHSIG): no stack is left running
            up.wait()
            raise
        reader.join(10)
        assert up.stdout is not None
        up.stdout.close()
    assert code == 0
    assert any("gms-relay: stopped" in line for line in lines)
    assert processes_mentioning(str(port)) == []  # ingress and simulator gone
    assert processes_mentioning(str(data_dir)) == []  # redis gone
