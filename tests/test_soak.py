"""A one-minute soak (the 10-minute one is `python benchmarks/soak.py`): memory stays flat."""

from __future__ import annotations

import pytest

from benchmarks.soak import growth, run_soak

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


def test_one_minute_soak_keeps_memory_flat() -> None:
    samples = run_soak(duration_s=60.0, rate=100.0, interval_s=3.0)
    assert samples[-1].events_delivered > 1000  # traffic really flowed
    for value, slack in (("ingress_rss_kib", 4096), ("worker_rss_kib", 8192), ("redis_used_kib", 2048)):
        middle, last = growth(samples, value)
        assert last <= middle * 1.15 + slack, (value, middle, last)
    middle_keys, last_keys = growth(samples, "redis_keys")
    assert last_keys <= middle_keys * 1.3 + 50
