"""The adaptive loop starts polls when the plan says, not on the tick: with a 5 s tick and a
0.5 s minimum interval, a churning bucket's polls start about 0.5 s apart. A loop that woke only
every tick (or only when a poll finished) would start them about 5 s apart.

Real poll code and PostgreSQL, the scripted provider through the real ResyProvider, as in
tests/poller/test_adaptive_scheduler.py.
"""

from __future__ import annotations

import statistics

import pytest
from sqlalchemy import Engine

from services.poller.scheduler import Scheduler
from tests.poller.scripted import ScriptedResy, reset_buckets
from tests.poller.test_adaptive_scheduler import CHURNING, adaptive, gaps, replica, run_for

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
