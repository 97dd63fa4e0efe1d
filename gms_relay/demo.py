"""What `gms-relay up --simulate` adds: the demo's environment, and the simulator's summary to show
when the stack stops (the simulator prints it into its log file)."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from shared.redis_server import free_port


def simulator_summary(log: Path) -> str | None:
    """The simulator's last summary (simulator/cli.py's `summary`, which starts with "chats: ")."""
    if not log.exists():
        return None
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("chats: ")]
    return "\n".join(f"  {line}" for line in lines[starts[-1] :]) if starts else None


def demo_env(env: dict[str, str]) -> tuple[int, int, dict[str, str]]:
    """Ports of the simulated Chat API and the demo receiver, and the secrets made up for the demo
    (what the operator already set is kept). DEMO=true serves the demo chat page at /demo, which
    starts chats with POST /chats and reads them over device streams: both need DEVICE_TOKEN_SECRET
    (made up too; nobody needs to see it, so it is not among those returned to print)."""
    chat_port, receiver_port = free_port(), free_port()
    demo = {
        "GMS_URL": f"http://127.0.0.1:{chat_port}",
        "API_TOKEN": secrets.token_urlsafe(16),
        "WEBHOOK_URL": f"http://127.0.0.1:{receiver_port}/webhook",
        "WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        "DEVICE_TOKEN_SECRET": secrets.token_urlsafe(32),
        "DEMO": "true",
    }
    generated = {}
    for name, value in demo.items():
        if not env.get(name):
            env[name] = value
            if name in ("API_TOKEN", "WEBHOOK_SECRET"):
                generated[name] = value
    return chat_port, receiver_port, generated
