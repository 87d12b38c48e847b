"""Prometheus metrics for a SQLAlchemy connection pool.

Gauges (size, in use, overflow) are read from the pool at scrape time by a collector, so they
can never drift from the truth; checkout wait and timeouts are recorded by the instrumented pool
classes in `shared.db.engine` as they happen. A tracked pool's counters exist at zero from the
start: `increase()` ignores a series' first sample, so a pod's first timeouts would be invisible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.pool import Pool, QueuePool

CHECKOUT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class PoolMetrics:
    """The pool metric families of one service, registered in that service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.checkout_wait = Histogram(
            "dropwatch_db_pool_checkout_wait_seconds",
            "Time spent waiting for a connection from the pool.",
            ["pool"],
            buckets=CHECKOUT_BUCKETS,
            registry=registry,
        )
        self.checkout_timeouts = Counter(
            "dropwatch_db_pool_checkout_timeouts",
            "Checkouts that gave up because no connection became free in time.",
            ["pool"],
            registry=registry,
        )
        self._pools: dict[str, Callable[[], Pool]] = {}
        registry.register(_PoolStateCollector(self._pools))

    def track(self, name: str, get_pool: Callable[[], Pool]) -> None:
        """Report the pool that `get_pool()` returns (read at each scrape) under label `name`."""
        self._pools[name] = get_pool
        self.checkout_wait.labels(name)
        self.checkout_timeouts.labels(name)


class _PoolStateCollector(Collector):
    def __init__(self, pools: dict[str, Callable[[], Pool]]) -> None:
        self._pools = pools

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = GaugeMetricFamily(
            "dropwatch_db_pool_size", "Configured number of pooled connections.", labels=["pool"]
        )
        in_use = GaugeMetricFamily(
            "dropwatch_db_pool_connections_in_use",
            "Connections currently checked out of the pool.",
            labels=["pool"],
        )
        open_now = GaugeMetricFamily(
            "dropwatch_db_pool_open_connections",
            "Connections the pool holds open now (idle + checked out).",
            labels=["pool"],
        )
        overflow = GaugeMetricFamily(
            "dropwatch_db_pool_overflow_connections",
            "Connections open beyond the pool size (negative: pool not yet filled).",
            labels=["pool"],
        )
        max_overflow = GaugeMetricFamily(
            "dropwatch_db_pool_max_overflow_connections",
            "Configured maximum of overflow connections.",
            labels=["pool"],
        )
        for name, get_pool in self._pools.items():
            pool = get_pool()
            if not isinstance(pool, QueuePool):
                continue
            size.add_metric([name], pool.size())
            in_use.add_metric([name], pool.checkedout())
            open_now.add_metric([name], pool.checkedin() + pool.checkedout())
            overflow.add_metric([name], pool.overflow())
            max_overflow.add_metric([name], pool._max_overflow)
        yield size
        yield in_use
        yield open_now
        yield overflow
        yield max_overflow
