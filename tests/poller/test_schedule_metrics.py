"""The adaptive schedule's exported metrics, scraped as Prometheus reads them after real polls:
the configured budget, the planned rate within it, the shared budget's grants matching the
requests sent, the expected detection delay, each live bucket's interval within [min, max] and
the requests started by bucket class.

The replica is assembled as `app.build_context` does (the market's shared budget in PostgreSQL,
tracked by the metrics; upstream requests observed), over the scripted provider.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from services.poller import policy
from services.poller.budget import make_budget
from services.poller.metrics import PollerMetrics
from services.poller.poll import PollContext
from services.poller.resy import ResyProvider
from services.poller.scheduler import Scheduler
from services.poller.settings import PollerSettings
from shared.db.engine import make_async_engine
from tests.poller.adaptive_support import Moving, Recording, adaptive, run_for
from tests.poller.helpers import TODAY
from tests.poller.scripted import ScriptedResy, reset_buckets

pytestmark = pytest.mark.db

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@asynccontextmanager
async def assembled(
    settings: PollerSettings, db_url: str, resy: ScriptedResy
) -> AsyncIterator[tuple[PollContext, Recording]]:
    metrics = PollerMetrics()
    engine = make_async_engine(settings, name="poller", metrics=metrics.pool, url=db_url)
    budget = make_budget(settings, engine)
    metrics.track_budget(budget.counters, budget.rate)
    provider = ResyProvider(
        settings,
        budget,
        observe=lambda status_class: metrics.upstream_requests.labels(status_class).inc(),
        transport=resy.transport(),
    )
    recording = Recording(provider)
    try:
        ctx = PollContext(settings, engine, recording, metrics, "metrics", clock=Moving())
        yield ctx, recording
    finally:
        await recording.aclose()
        await engine.dispose()


def scrape(metrics: PollerMetrics) -> Series:
    """Every sample of the registry as the exposition format gives it."""
    found: Series = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, tuple(sorted(labels.items())))]


def labelled(series: Series, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in series.items() if n == name}


@pytest.mark.slow
async def test_the_exported_schedule_metrics_follow_the_polls(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    reset_buckets(engine)
    settings = adaptive(db_url, requests_per_second=8.0, max_interval_seconds=3.0)
    async with assembled(settings, db_url, resy) as (ctx, rec):
        await run_for(7.0, Scheduler(ctx, clock=ctx.clock), resy=resy)
        series = scrape(ctx.metrics)
    polls = sum(len(times) for times in rec.polls.values())
    assert polls >= 6

    budget = value(series, "dropwatch_poller_request_budget_per_second")
    assert budget == settings.requests_per_second
    planned = value(series, "dropwatch_poller_planned_requests_per_second")
    assert 0 < planned <= budget + 1e-9
    # Every request sent took a token of the shared budget, and nothing else did.
    granted = value(series, "dropwatch_poller_budget_granted_requests_total")
    upstream = labelled(series, "dropwatch_poller_upstream_requests_total", "status_class")
    sent = sum(upstream.values())
    assert granted > 0 and granted == sent == resy.requests
    assert value(series, "dropwatch_poller_budget_refused_requests_total") == 0

    # The churn wrote changes: the expected delay is positive, at most half the max interval.
    delay = value(series, "dropwatch_poller_expected_detection_delay_seconds")
    assert 0 < delay <= settings.max_interval_seconds / 2

    intervals = labelled(series, "dropwatch_poller_bucket_poll_interval_seconds", "bucket_id")
    days = (TODAY, TODAY + dt.timedelta(days=1))
    live = {f"{day.isoformat()}_{anchor}" for day in days for anchor in settings.anchors}
    assert set(intervals) == live
    for bucket_id, interval in intervals.items():
        assert settings.min_interval_seconds <= interval <= settings.max_interval_seconds, bucket_id

    # Requests started by class: each poll's cost (two party sizes, one page), all counted.
    by_class = labelled(series, "dropwatch_poller_scheduled_requests_total", "class")
    assert set(by_class) == set(policy.CLASSES)
    assert sum(by_class.values()) == 2 * polls
    assert by_class[policy.FRESH] > 0  # the first polls: nothing baselined yet
    assert by_class[policy.CHURNING] > 0  # 19:00 today, once its changes are counted
    assert by_class[policy.QUIET] > 0  # tomorrow's empty buckets
