"""What a planned failover (SENTINEL FAILOVER) costs at each INGRESS_ACK level: acknowledged pushes lost.

    python -m benchmarks.planned_failover --ack stored --replicas 1 [--pause]

A real primary, `--replicas` replicas and one Sentinel on loopback (tests/sentinel_cluster.py, Debian's
binaries); the ingress app (in this process, through Sentinel) takes triggers for distinct chats from
one sequential sender at `--rate` pushes/s while the Sentinel fails over. Once the old primary is a replica of
the new one, every push answered 200 is looked up on the new primary: the ones missing were
acknowledged and then lost (written on the old primary after the replica's promotion). `--pause` runs
`CLIENT PAUSE 15000 WRITE` on the primary first, the README's planned-failover procedure.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from starlette.testclient import TestClient

from ingress.app import create_app
from shared import keys
from shared.settings import load_settings
from tests.pushes import body, trigger_message
from tests.sentinel_cluster import SentinelCluster

PAUSE_MS = 15000  # longer than every relay client's socket timeout: each gives up on the old primary


def run(
    ack: str, replicas: int, pause: bool, rate: float, warmup_s: float = 0.5, after_s: float = 1.0
) -> str:
    with (
        tempfile.TemporaryDirectory() as directory,
        SentinelCluster(Path(directory), replicas=replicas) as cluster,
    ):
        env = {**cluster.env(), "INGRESS_ACK": ack, "ALLOW_OPEN_PUSH": "true"}
        answers: list[tuple[float, str, int]] = []
        stop = threading.Event()
        with TestClient(create_app(load_settings(env)), raise_server_exceptions=False) as client:

            def send() -> None:
                number, begun = 0, time.monotonic()
                while not stop.is_set():
                    session_id = f"s{number}"
                    reply = client.post("/push", content=body(trigger_message(3, session_id=session_id)))
                    answers.append((time.monotonic(), session_id, reply.status_code))
                    number += 1
                    time.sleep(max(0.0, begun + number / rate - time.monotonic()))  # paced, like one GMS node

            sender = threading.Thread(target=send)
            sender.start()
            time.sleep(warmup_s)
            old = cluster.primary()
            if pause:
                with old.client() as primary:
                    primary.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
            started = time.monotonic()
            with cluster.sentinels[0].client() as sentinel:
                sentinel.sentinel_failover(cluster.master)
            new = cluster.wait_for_new_primary(old)
            promoted = time.monotonic() - started
            cluster.wait_replicating(old, timeout_s=60)
            demoted = time.monotonic() - started
            time.sleep(after_s)
            stop.set()
            sender.join()
        with new.client() as primary:
            acked = [session_id for _, session_id, status in answers if status == 200]
            lost = [session_id for session_id in acked if not primary.exists(keys.session(session_id))]
        refused = [at - started for at, _, status in answers if status != 200 and at > started]
        window = f"{min(refused):.1f}-{max(refused):.1f} s" if refused else "none"
        return (
            f"INGRESS_ACK={ack}, {replicas} replica(s){', CLIENT PAUSE first' if pause else ''}: "
            f"{len(answers)} pushes, {len(acked)} answered 200, {len(lost)} of them lost; "
            f"{len(refused)} answered 503 ({window} after SENTINEL FAILOVER); promoted after "
            f"{promoted:.1f} s, old primary a replica after {demoted:.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ack", default="stored", choices=["stored", "replicated"], help="default: stored")
    parser.add_argument("--replicas", type=int, default=1, help="default: 1")
    parser.add_argument("--pause", action="store_true", help="CLIENT PAUSE WRITE before the failover")
    parser.add_argument("--rate", type=float, default=200.0, help="pushes per second; default: 200")
    args = parser.parse_args()
    print(run(args.ack, args.replicas, args.pause, args.rate))


if __name__ == "__main__":
    main()
