"""The adaptive loop starts polls when the plan says, not on the tick: with a 5 s tick and a
0.5 s minimum interval, a churning bucket's polls start about 0.5 s apart. A loop that woke only
every tick (or only when a poll finished) would start them about 5 s apart.

Real poll code and PostgreSQL, the scripted provider through the real ResyProvider, as in
tests/poller/adaptive_support.py.
"""

from __future__ import annotations

import statistics

import pytest
from sqlalchemy import Engine

from services.poller.scheduler import Scheduler
from tests.poller.adaptive_support import (
    CHURNING,
    Slow,
    adaptive,
    gaps,
    replica,
    run_for,
)
from tests.poller.scripted import ScriptedResy, reset_buckets

pytestmark = pytest.mark.db

TICK = 5.0
MIN_INTERVAL = 0.5


@pytest.mark.slow
async def test_polls_start_at_sub_second_spacing_though_the_tick_is_five_seconds(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    reset_buckets(engine)
    settings = adaptive(
        db_url,
        tick_seconds=TICK,
        min_interval_seconds=MIN_INTERVAL,
        max_interval_seconds=10.0,
        requests_per_second=20.0,  # room for the churning bucket at its minimum interval
    )
    async with replica(settings, db_url, resy, "precise", shared=False) as (ctx, rec):
        await run_for(8.0, Scheduler(ctx, clock=ctx.clock), resy=resy)
        planned = ctx.metrics.poll_interval.labels(CHURNING)._value.get()
    assert planned < 1.0  # the plan asks for sub-second polls of it (fresh, then churning)
    spacing = gaps(rec.polls[CHURNING])
    assert len(spacing) >= 6, spacing  # one poll a tick would be 2 in 8 s
    assert statistics.median(spacing) < 1.5, spacing
    assert max(spacing) < TICK, spacing
    # ... and never sooner than its interval (a little slack for the two clocks).
    assert min(spacing) >= MIN_INTERVAL * 0.8, spacing


@pytest.mark.slow
async def test_an_interval_runs_from_poll_start_to_poll_start_however_long_the_fetch(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    """A churning bucket planned every 1 s whose fetches take 0.8 s starts a poll about every
    second, not every 1.8 s: the plan's intervals (and the budget it spends) assume a poll's
    time is its start, so `last_polled_at` is when the fetch began (sql.WRITE_POLL)."""
    reset_buckets(engine)
    settings = adaptive(
        db_url,
        tick_seconds=TICK,
        min_interval_seconds=1.0,
        max_interval_seconds=10.0,
        requests_per_second=20.0,
    )
    async with replica(settings, db_url, resy, "slow", shared=False) as (ctx, rec):
        ctx.provider = Slow(rec, 0.8)
        await run_for(10.0, Scheduler(ctx, clock=ctx.clock), resy=resy)
        planned = ctx.metrics.poll_interval.labels(CHURNING)._value.get()
    assert planned < 1.2, planned  # about the minimum: it churns, the budget is ample
    spacing = gaps(rec.polls[CHURNING])[2:]  # after its first polls (fresh, baselining)
    assert len(spacing) >= 4, spacing
    # From the poll's end it would be the interval plus 0.8 s and more (1.8 s measured).
    assert statistics.median(spacing) < planned + 0.4, (planned, spacing)
    assert min(spacing) >= 0.8, spacing  # never two polls of one bucket at once
