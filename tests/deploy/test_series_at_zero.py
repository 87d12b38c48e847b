"""Every labelled series a rule or the dashboard may need exists at zero from the start.

`increase()` and `rate()` ignore a series' first sample: a counter created on first use hides
its first events (a pod's first pool checkout timeouts, its first fetch failures).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from shared.db.pool_metrics import PoolMetrics


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_tracked_pools_counters_exist_at_zero() -> None:
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    metrics.track("feed", lambda: engine.pool)
    samples = _samples(registry)
    pool = (("pool", "feed"),)
    assert samples[("dropwatch_db_pool_checkout_timeouts_total", pool)] == 0
    assert samples[("dropwatch_db_pool_checkout_wait_seconds_count", pool)] == 0
