"""INGRESS_ACK=replicated with a single replica (a primary, one replica, three Sentinels).

After the primary dies the promoted replica is the only node left, so no write can be confirmed by a
replica until the old primary returns as one (Sentinel demotes it 8 s after it is back, then it
resynchronises). Until then the replicated ingress answers 503: it keeps its promise (a 200 means a
replica holds the push) at the price of availability. GMS counts each 503 as a failed delivery:
Chat Server resends reliable triggers, payload pushes are gone. The stored ingress answers 200
within 5 s of the promotion. Hence: run `replicated` with two replicas (tests/failover/
test_failover.py), as Kafka's acks=all wants min.insync.replicas below the replication factor.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.failover.harness import Side, failover_cluster
from tests.processes import relay_env, relay_processes, wait_for

pytestmark = [pytest.mark.failover, pytest.mark.timeout(120)]

RECOVERY_DEADLINE_S = 5.0


def test_one_replica_replicated_waits_for_the_old_primary(tmp_path: Path) -> None:
    with failover_cluster(tmp_path, replicas=1) as ha:
        env = relay_env(**ha.env(GMS_URL="http://127.0.0.1:9", LOG_LEVEL="ERROR"))
        with (
            relay_processes({**env, "INGRESS_ACK": "stored"}, workers=0) as stored,
            relay_processes({**env, "INGRESS_ACK": "replicated"}, workers=0) as replicated,
        ):
            sides = {
                "stored": Side("stored", stored.base_url),
                "replicated": Side("replicated", replicated.base_url),
            }
            for side in sides.values():
                assert [side.push() for _ in range(10)] == [200] * 10

            old = ha.kill_primary()
            promotion = ha.wait_for_promotion(old)
            for _ in range(20):  # a while with the old primary dead: the promoted one is alone
                for side in sides.values():
                    side.push()
            times: list[float] = []

            def rejoin() -> None:
                times.append(time.monotonic())  # the old primary is dead until here ...
                ha.restart_as_replica(old)
                times.append(time.monotonic())  # ... and replicating the new one from here

            restart = threading.Thread(target=rejoin)
            restart.start()
            while restart.is_alive():
                for side in sides.values():
                    side.push()
            restart.join()
            assert len(times) == 2, "the old primary did not come back as a replica"
            restarted_at, rejoined_at = times
            # After the old primary is back as a replica, replicated answers 200 again.
            wait_for(lambda: sides["replicated"].push() == 200, timeout_s=RECOVERY_DEADLINE_S)
            with ha.client() as client:
                lost = {ack: sorted(set(side.acked) - side.kept(client)) for ack, side in sides.items()}
            for side in sides.values():
                side.close()

    def first_200(side: Side) -> float:
        return next(at for at, status in side.answers if status == 200 and at > promotion.promoted_at)

    at = promotion.promoted_at
    alone = sides["replicated"].statuses(at, restarted_at)
    print(
        f"\none replica: promoted {promotion.failover_s:.2f} s after the kill; 200 again after the "
        f"promotion: stored {first_200(sides['stored']) - at:.2f} s, replicated "
        f"{first_200(sides['replicated']) - at:.1f} s (old primary restarted at {restarted_at - at:.1f} s, "
        f"replicating at {rejoined_at - at:.1f} s); replicated answered {len(alone)} pushes "
        f"{sorted(set(alone))} while the old primary was down; acknowledged pushes lost: {lost}"
    )
    assert first_200(sides["stored"]) - promotion.promoted_at <= RECOVERY_DEADLINE_S
    # replicated: while the promoted replica is alone, no 200 (nothing could confirm a write) ...
    assert alone and 200 not in alone
    assert first_200(sides["replicated"]) > restarted_at
    # ... and nothing it acknowledged, before or after, is lost.
    assert lost["replicated"] == []
