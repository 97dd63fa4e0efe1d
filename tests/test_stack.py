"""`gms-relay up --simulate`: the one-command stack, end to end, then a clean stop; and what its
rq-dashboard shows of the relay's workers, queues and jobs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared import keys
from shared.redis_server import free_port
from simulator.receiver import WebhookReceiver
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


def stack_env(**env: str) -> dict[str, str]:
    """The test environment without REDIS_URL and GMS_URL, so `up` embeds Redis and simulates GMS."""
    return {k: v for k, v in relay_env(**env).items() if k not in ("REDIS_URL", "GMS_URL")}


@contextmanager
def gms_relay_up(
    data_dir: Path, port: int, dashboard_port: int, env: Mapping[str, str]
) -> Iterator[list[str]]:
    """`gms-relay up --simulate` with two workers; yields its stdout lines as they arrive. On a normal
    exit it is stopped with SIGINT (Ctrl-C) and must have stopped cleanly, leaving nothing running."""
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
            str(dashboard_port),
            "--data-dir",
            str(data_dir),
        ],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(up.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        yield lines
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


def test_up_simulate_delivers_end_to_end_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh-data"
    with gms_relay_up(data_dir, free_port(), free_port(), stack_env()) as lines:
        wait_for(lambda: any("embedded Redis at" in line for line in lines), timeout_s=30)
        [redis_url] = re.findall(r"redis://\S+", next(line for line in lines if "embedded Redis" in line))
        client = redis.Redis.from_url(redis_url)
        # Counted by the relay once the demo receiver accepted a delivery (tests/test_up.py checks what
        # the receiver printed: the signature verified), so this holds whatever `up` prints.
        wait_for(lambda: int(client.hget(keys.COUNTERS, "webhook_delivered") or 0) > 0, timeout_s=60)
        wait_for(
            lambda: any(client.xlen(key) > 0 for key in client.scan_iter("gms-relay:events:*")), timeout_s=30
        )
        assert (data_dir / "redis").is_dir()
        client.close()


class Dashboard:
    """rq-dashboard's JSON endpoints, as its pages fetch them."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/0"

    def get(self, path: str) -> Any:
        """The decoded reply, None while the dashboard is not listening yet; any non-200 fails."""
        try:
            reply = httpx.get(self.base + path, timeout=10)
        except httpx.TransportError:
            return None
        assert reply.status_code == 200, f"{path}: {reply.status_code} {reply.text[:300]}"
        return reply.json() if path.endswith(".json") else reply.text

    def jobs(self, queue: str, registry: str) -> list[dict[str, Any]]:
        listed = self.get(f"/data/jobs/{queue}/{registry}/8/asc/1.json")
        return [] if listed is None else list(listed["jobs"])


def test_up_rq_dashboard_shows_the_relays_workers_queues_and_jobs(tmp_path: Path) -> None:
    """The Workers page used to answer 500: rq-dashboard read a busy worker's current (JSON) job with
    pickle. A sink that answers 410 Gone dead-letters deliveries, so the failed registry has some too."""
    dashboard_port = free_port()
    dashboard = Dashboard(dashboard_port)
    drain_description = "drain: refresh and deliver every dirty chat"
    with (
        WebhookReceiver(status=410) as gone,
        gms_relay_up(tmp_path / "data", free_port(), dashboard_port, stack_env(WEBHOOK_URL=gone.url)),
    ):

        def a_worker_is_draining() -> bool:
            listed = dashboard.get("/data/workers.json")
            if listed is None:
                return False
            workers = listed["workers"]
            assert len(workers) == 2
            assert all(w["queues"] == list(keys.QUEUES) for w in workers)
            return any(
                isinstance(w["current_job"], dict) and w["current_job"]["description"] == drain_description
                for w in workers
            )

        wait_for(a_worker_is_draining, timeout_s=60)
        assert "Workers" in dashboard.get("/view/workers")

        def drain_jobs_listed() -> bool:
            listed = dashboard.jobs(keys.DRAIN_QUEUE, "started") + dashboard.jobs(keys.DRAIN_QUEUE, "queued")
            return any(job["description"] == drain_description for job in listed)

        wait_for(drain_jobs_listed, timeout_s=30)
        wait_for(lambda: dashboard.jobs(keys.WEBHOOK_QUEUE, "failed") != [], timeout_s=60)
        dead_letters = dashboard.jobs(keys.WEBHOOK_QUEUE, "failed")  # one per chat with a delivery in flight
        dead_letter = dead_letters[0]
        assert dead_letter["description"].startswith("webhook ")
        assert dead_letter["exc_info"]  # the reason it was dead-lettered
        detail = dashboard.get(f"/data/job/{dead_letter['id']}.json")
        assert (detail["status"], detail["origin"]) == ("failed", keys.WEBHOOK_QUEUE)
        # Deleting would strand the chat's later deliveries (only skip-failed releases them): disabled.
        deleted = httpx.post(f"http://127.0.0.1:{dashboard_port}/job/{dead_letter['id']}/delete", timeout=10)
        assert deleted.json() == {"status": "DISABLED"}
        assert dead_letter["id"] in {job["id"] for job in dashboard.jobs(keys.WEBHOOK_QUEUE, "failed")}
        queues = {q["name"]: q for q in dashboard.get("/data/queues.json")["queues"]}
        assert set(queues) == set(keys.QUEUES)
        assert queues[keys.WEBHOOK_QUEUE]["failed_job_registry_count"] >= len(dead_letters)
