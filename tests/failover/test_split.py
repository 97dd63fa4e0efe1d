"""A split: the old primary keeps accepting writes after the Sentinels promoted another node.

The old primary is frozen (SIGSTOP) until the Sentinels have promoted a replica and pointed the other
replica at it, then resumed (SIGCONT): it believes it is still the primary until Sentinel demotes it
(8 s later; tests/failover/harness.py says why this is the split of a real partition). Two ingress
processes on its side of the split, configured with its address as clients on that side would be,
keep posting payload pushes through that window, one at INGRESS_ACK=stored, one at replicated. Every
write the old primary takes then is thrown away when it resynchronises from the new primary.

- replicated never acknowledges such a write: WAIT 1 finds no replica on the old primary (its
  replicas follow the new one), so the ingress answers 503 and GMS counts a failure.
- stored acknowledges them, and they are lost, unless the primary runs with `min-replicas-to-write 1`
  (and `min-replicas-max-lag 1`): a primary without a live replica then refuses every write
  (NOREPLICAS) and the ingress answers 503. The price: a primary whose replicas are all gone refuses
  too, hence two replicas here (after the failover the new primary keeps one).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.failover.harness import Side, failover_cluster
from tests.processes import relay_env, relay_processes

pytestmark = [pytest.mark.failover, pytest.mark.timeout(120)]

ACKS = ("stored", "replicated")
BEFORE_SPLIT = 20  # pushes per ingress before the primary is frozen


@pytest.mark.parametrize("min_replicas_to_write", [0, 1])
def test_an_old_primary_taking_writes_after_the_failover(tmp_path: Path, min_replicas_to_write: int) -> None:
    config = ("min-replicas-to-write 1", "min-replicas-max-lag 1") if min_replicas_to_write else ()
    with failover_cluster(tmp_path, replicas=2, redis_config=config) as ha:
        old = ha.primary()
        env = relay_env(REDIS_URL=old.url, GMS_URL="http://127.0.0.1:9", LOG_LEVEL="ERROR")
        with (
            relay_processes({**env, "INGRESS_ACK": "stored"}, workers=0) as stored,
            relay_processes({**env, "INGRESS_ACK": "replicated"}, workers=0) as replicated,
        ):
            sides = {
                "stored": Side("stored", stored.base_url),
                "replicated": Side("replicated", replicated.base_url),
            }
            for side in sides.values():
                assert [side.push() for _ in range(BEFORE_SPLIT)] == [200] * BEFORE_SPLIT

            ha.freeze(old)
            promotion = ha.wait_for_promotion(old)
            for node in ha.cluster.nodes:  # the other replica follows the new primary (majority side)
                if node is not old and node is not promotion.new:
                    ha.wait_demoted(node)
            demoted = threading.Event()

            def demotion() -> None:
                ha.wait_demoted(old)
                demoted.set()

            watcher = threading.Thread(target=demotion)
            ha.thaw(old)
            thawed_at = time.monotonic()
            watcher.start()
            while not demoted.is_set():  # back to back, as GMS nodes send
                for side in sides.values():
                    side.push()
            watcher.join()
            with promotion.new.client() as client:
                lost = {ack: sorted(set(side.acked) - side.kept(client)) for ack, side in sides.items()}
            during = {ack: side.statuses(thawed_at) for ack, side in sides.items()}
            for side in sides.values():
                side.close()

    print(
        f"\nsplit, min-replicas-to-write {min_replicas_to_write}, pushes to the old primary between its "
        "thaw and its demotion: "
        + "; ".join(
            f"{ack}: {len(during[ack])} sent, {during[ack].count(200)} answered 200, {len(lost[ack])} "
            "acknowledged pushes lost"
            for ack in ACKS
        )
    )
    # replicated: a stale primary has no replica to confirm a write, so it acknowledges nothing and
    # nothing acknowledged is lost.
    assert during["replicated"] and 200 not in during["replicated"]
    assert lost["replicated"] == []
    if min_replicas_to_write:
        # stored with min-replicas-to-write: the stale primary refuses every write (NOREPLICAS).
        assert during["stored"] and 200 not in during["stored"]
        assert lost["stored"] == []
