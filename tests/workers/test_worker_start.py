"""Starting without Redis: a worker waits for it and then starts normally; the operator commands say
in one line that Redis is unreachable. Real processes, a real redis-server started late."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import redis

from gms_relay.stack import relay_command
from shared import keys
from shared.redis_server import RedisServer, free_port
from tests.processes import relay_env, wait_for

pytestmark = pytest.mark.timeout(120)


def test_a_worker_started_before_redis_waits_then_starts(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet
    stderr_path = tmp_path / "worker.stderr"
    env = relay_env(REDIS_URL=f"redis://127.0.0.1:{port}/0", GMS_URL="http://127.0.0.1:9")
    server = RedisServer(tmp_path / "redis", port=port, appendonly=False)
    with stderr_path.open("wb") as stderr:
        worker = subprocess.Popen(relay_command("worker"), env=env, stderr=stderr)
    try:
        wait_for(lambda: "waiting for Redis" in stderr_path.read_text(), timeout_s=30)
        assert worker.poll() is None
        server.start()
        client = redis.Redis(port=port)

        def working() -> bool:
            """Registered, and in RQ's work loop (whose signal handlers make SIGTERM a warm shutdown)."""
            return any(
                client.hget(key, "state") in (b"idle", b"busy") for key in client.smembers("rq:workers")
            )

        wait_for(working, timeout_s=60)
        # Both queues are listed (rq-dashboard's Queues page) before any job was ever enqueued.
        assert client.smembers(keys.RQ_QUEUES) == {keys.rq_queue(name).encode() for name in keys.QUEUES}
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        client.close()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        server.stop()
    log = stderr_path.read_text()
    assert "Traceback" not in log
    assert f"redis://127.0.0.1:{port}/0 (REDIS_URL)" in log


@pytest.mark.parametrize("command", [["requeue-failed", "--all"], ["skip-failed", "some-job"]])
def test_operator_commands_without_redis_say_so_in_one_line(command: list[str]) -> None:
    url = f"redis://ops:hunter2@127.0.0.1:{free_port()}/0"
    env = relay_env(REDIS_URL=url, GMS_URL="http://127.0.0.1:9")
    done = subprocess.run(relay_command(*command), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert "cannot reach Redis" in line and "REDIS_URL" in line
    assert "hunter2" not in line  # the password is not shown
