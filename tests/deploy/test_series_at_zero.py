"""Every labelled series a rule or the dashboard may need exists at zero from the start.

`increase()` and `rate()` ignore a series' first sample: a counter created on first use hides
its first events (a pod's first pool checkout timeouts, its first fetch failures).
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.pool import QueuePool

from services.feed.metrics import GrpcServerMetrics
from services.poller import judge
from services.poller.errors import FetchError
from services.poller.metrics import (
    FETCH_OUTCOMES,
    HEALTHY_OUTCOMES,
    KIND_VERDICTS,
    PollerMetrics,
)
from shared.db.pool_metrics import PoolMetrics
from tests.deploy.registries import FEED_SERVICE


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


def test_every_poller_outcome_verdict_and_status_class_exists_at_zero() -> None:
    metrics = PollerMetrics()
    samples = _samples(metrics.registry)
    for reason in FETCH_OUTCOMES:
        assert samples[("dropwatch_poller_fetch_outcomes_total", (("reason", reason),))] == 0
        count = ("dropwatch_poller_poll_duration_seconds_count", (("outcome", reason),))
        assert samples[count] == 0
    for verdict in KIND_VERDICTS:
        key = ("dropwatch_poller_request_kind_verdicts_total", (("verdict", verdict),))
        assert samples[key] == 0
    for status_class in ("2xx", "4xx", "5xx", "error"):
        key = ("dropwatch_poller_upstream_requests_total", (("status_class", status_class),))
        assert samples[key] == 0


def test_the_fetch_outcomes_cover_every_error_and_judgement() -> None:
    reasons = {"lease_conflict"}
    todo: list[type[FetchError]] = [FetchError]
    while todo:
        cls = todo.pop()
        reasons.add(cls.reason)
        todo += cls.__subclasses__()
    reasons |= {judge.HEALTHY, judge.SUSPECT, judge.BLOCKED, judge.PARTIAL, judge.CONFIRMED}
    reasons.add(judge.SOLD_OUT)
    assert reasons <= set(FETCH_OUTCOMES)
    assert set(HEALTHY_OUTCOMES) <= set(FETCH_OUTCOMES)


@pytest.mark.db
def test_a_pool_reports_the_connections_it_really_holds_open(db_url: str) -> None:
    """Two connections opened by a pool of ten are two, not ten (the dashboard's panel)."""
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry)
    url = db_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url, poolclass=QueuePool, pool_size=10, max_overflow=5)
    metrics.track("feed", lambda: engine.pool)
    first, second = engine.connect(), engine.connect()
    second.close()
    try:
        samples = _samples(registry)
        pool = (("pool", "feed"),)
        assert samples[("dropwatch_db_pool_open_connections", pool)] == 2
        assert samples[("dropwatch_db_pool_connections_in_use", pool)] == 1
    finally:
        first.close()
        engine.dispose()


def test_every_feed_method_and_status_code_exists_at_zero() -> None:
    registry = CollectorRegistry()
    GrpcServerMetrics(registry).prepare(FEED_SERVICE, ("JustOpened", "StillOpen"))
    samples = _samples(registry)
    for method in ("JustOpened", "StillOpen"):
        labels = {"grpc_type": "unary", "grpc_service": FEED_SERVICE, "grpc_method": method}
        assert samples[("grpc_server_started_total", tuple(sorted(labels.items())))] == 0
        for code in ("OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"):
            key = tuple(sorted({**labels, "grpc_code": code}.items()))
            assert samples[("grpc_server_handled_total", key)] == 0
