"""The services' real metric registries, with a few samples recorded, as exposition text.

Built in-process from the same classes the services use (no database, no server), so the
names the alert rules and the dashboard query can be checked against what is really exported.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import create_engine

import services.maintenance.push as push_module
from services.feed.cache import AnswerCache
from services.feed.metrics import GrpcServerMetrics, WatchMetrics, horizon_lag_gauge
from services.maintenance.run import RunSummary, StepResult
from services.poller.exported import MaintenanceSuccess
from services.poller.metrics import PollerMetrics
from shared.db.pool_metrics import PoolMetrics

FEED_SERVICE = "dropwatch.feed.v1.FeedService"


def _track_pool(pool: PoolMetrics, name: str) -> None:
    # A real QueuePool with the default sizes; creating the engine opens no connection.
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", pool_size=10)
    pool.track(name, lambda: engine.pool)
    pool.checkout_wait.labels(name).observe(0.002)
    pool.checkout_timeouts.labels(name)


def feed_metrics() -> str:
    registry = CollectorRegistry()
    grpc_metrics = GrpcServerMetrics(registry)
    cache = AnswerCache(2.0, registry)
    horizon_lag_gauge(registry).set(0)
    _track_pool(PoolMetrics(registry), "feed")
    for method, code, seconds in (
        ("JustOpened", "OK", 0.004),
        ("StillOpen", "OK", 0.02),
        ("StillOpen", "INVALID_ARGUMENT", 0.001),
    ):
        labels = ("unary", FEED_SERVICE, method)
        grpc_metrics.started.labels(*labels).inc()
        grpc_metrics.handled.labels(*labels, code).inc()
        grpc_metrics.latency.labels(*labels).observe(seconds)
    cache.get("JustOpened", ("JustOpened", "q", 500, ""))
    cache.invalidate()
    # WatchDrops (#15): one stream open, a change sent, one read of one commit, a slow end.
    watch = WatchMetrics(registry)
    watch.streams.set(1)
    watch.messages.labels("opened").inc()
    watch.lag.observe(0.012)
    watch.reads.labels("notify").inc()
    watch.commits.inc()
    watch.ended.labels("slow").inc()
    return generate_latest(registry).decode()


def poller_metrics() -> str:
    metrics = PollerMetrics()
    _track_pool(metrics.pool, "poller")
    metrics.poll_duration.labels("healthy").observe(0.3)
    metrics.events_written.labels("NEW_DROP").inc(3)
    metrics.fetch_outcomes.labels("healthy").inc()
    metrics.fetch_outcomes.labels("rate_limited").inc()
    metrics.upstream_requests.labels("2xx").inc(5)
    metrics.last_healthy_poll.labels("2026-12-01_19:00").set(1.8e9)
    metrics.lease_conflicts.inc()
    metrics.in_flight.set(2)
    maintenance = MaintenanceSuccess()  # exported by the poller from maintenance_runs
    maintenance.value = 1.8e9
    metrics.registry.register(maintenance)
    return generate_latest(metrics.registry).decode()


def maintenance_metrics(monkeypatch: pytest.MonkeyPatch) -> str:
    """What `push_summary` sends to the Pushgateway (the push itself is intercepted)."""
    pushed: list[CollectorRegistry] = []

    def fake_push(url: str, job: str, registry: CollectorRegistry, **_: Any) -> None:
        pushed.append(registry)

    monkeypatch.setattr(push_module, "push_to_gateway", fake_push)
    summary = RunSummary(
        ran=True,
        today=dt.date(2026, 12, 1),
        cutoff="2026-12-01T15:00:00-05:00",
        steps={"aggregate": StepResult(rows=12, seconds=0.5), "prune": StepResult(rows=3)},
    )
    push_module.push_summary("http://127.0.0.1:9", "dropwatch_maintenance", summary)
    (registry,) = pushed
    return generate_latest(registry).decode()


def all_metrics(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    makers: dict[str, Callable[[], str]] = {"feed": feed_metrics, "poller": poller_metrics}
    texts = {name: make() for name, make in makers.items()}
    texts["maintenance"] = maintenance_metrics(monkeypatch)
    return texts


def sample_names(text: str) -> set[str]:
    """Names of the samples in an exposition (`foo_bucket`, `foo_total`, ...)."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names
