"""What the adaptive schedule knows, read from PostgreSQL (services/poller/adaptive.py): decayed
change rates, the market-local hour profile, pages per bucket, learned release windows, and a
slow read that keeps what was known.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from dataclasses import replace

import pytest
from sqlalchemy import Engine, text

from services.poller import store
from services.poller.scheduler import Scheduler
from tests.poller.adaptive_support import (
    CHURNING,
    NY,
    STEADY,
    adaptive,
    add_events,
    replica,
    schedule_rows,
)
from tests.poller.helpers import TODAY
from tests.poller.scripted import ScriptedResy, reset_buckets

pytestmark = pytest.mark.db


async def test_change_rates_decay_with_age_and_skip_what_is_too_old(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    reset_buckets(engine)
    tau = 600 / math.log(2)
    # In id order, as events are written (the first two are beyond the horizon).
    add_events(engine, STEADY, [7200.0])
    add_events(engine, CHURNING, [7200.0, 600.0])
    add_events(engine, CHURNING, [60.0], kind="CLOSED")
    add_events(engine, CHURNING, [0.0])
    add_events(engine, CHURNING, [0.0], kind="SIZE_OPEN")  # not a change of the open set
    settings = adaptive(db_url)
    async with replica(settings, db_url, resy, "rates", shared=False) as (ctx, _rec):
        live = Scheduler(ctx, clock=ctx.clock).live_range()

        async def read(floor: int) -> store.ChangeRates:
            async with ctx.engine.begin() as conn:
                return await store.read_change_rates(
                    conn,
                    first_day=live.first,
                    last_day=live.last,
                    cutoff_bucket_id=live.cutoff,
                    floor_id=floor,
                    tau=tau,
                    horizon_seconds=3600.0,
                )

        first = await read(0)
        expected = 1 + 0.5 + math.exp(-60 / tau)
        assert first.decayed[CHURNING] == pytest.approx(expected, rel=0.01)
        assert first.decayed[STEADY] == 0
        assert first.floor_id > 0  # the old events are below it now
        again = await read(first.floor_id)
        assert again.decayed[CHURNING] == pytest.approx(expected, rel=0.01)
        assert again.floor_id == first.floor_id
        add_events(engine, STEADY, [1.0])
        assert (await read(again.floor_id)).decayed[STEADY] == pytest.approx(1.0, rel=0.01)


async def test_the_hour_profile_counts_changes_by_market_local_hour(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    reset_buckets(engine)
    add_events(engine, CHURNING, [0.0, 1.0, 2.0])
    add_events(engine, CHURNING, [3.0], kind="CLOSED")
    add_events(engine, STEADY, [30 * 86400.0])  # older than the profile's days
    async with (
        replica(adaptive(db_url), db_url, resy, "profile", shared=False) as (ctx, _rec),
        ctx.engine.begin() as conn,
    ):
        counts, days = await store.read_hour_profile(
            conn, market="nyc", zone="America/New_York", days=7, since_day=TODAY
        )
        hour = (await conn.execute(text("SELECT now()"))).scalar_one()
    local_hours = {(hour - dt.timedelta(seconds=s)).astimezone(NY).hour for s in (0.0, 3.0)}
    assert sum(counts.values()) == 4 and set(counts) <= local_hours
    assert days == 1


async def test_without_the_release_windows_table_scheduling_goes_on(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    reset_buckets(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE release_windows"))
    async with replica(adaptive(db_url), db_url, resy, "nowin", shared=False) as (ctx, _rec):
        scheduler = Scheduler(ctx, clock=ctx.clock)
        planner = scheduler._planner
        assert planner is not None
        await planner.refresh(scheduler.live_range(), 2)
        assert planner.known.windows == []
        wait = await scheduler.start_planned(planner, 8)
        assert len(scheduler._tasks) == 2 and 0 < wait <= ctx.settings.tick_seconds
        await asyncio.gather(*scheduler._tasks)


async def test_a_bucket_with_more_venues_than_a_page_costs_more_requests(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    reset_buckets(engine)
    with engine.begin() as conn:  # size 2 at 150 venues (2 pages), size 4 at 100 (1 page)
        conn.execute(
            text(
                """
                INSERT INTO open_slots (bucket_id, slot_id, venue_id, slot_date, slot_time,
                    seating_type, party_sizes, time_slot, first_seen_at)
                SELECT :b, 's' || g, g % 150, :day, '19:00', 'x',
                    CASE WHEN g % 3 = 0 THEN '{2}'::smallint[] ELSE '{2,4}'::smallint[] END,
                    '19:00', now()
                FROM generate_series(1, 600) g
                """
            ),
            {"b": CHURNING, "day": TODAY},
        )
    settings = adaptive(db_url)
    async with replica(settings, db_url, resy, "pages", shared=False) as (ctx, _rec):
        scheduler = Scheduler(ctx, clock=ctx.clock)
        live = scheduler.live_range()
        async with ctx.engine.begin() as conn:
            extra = await store.read_extra_pages(
                conn,
                first_day=live.first,
                last_day=live.last,
                cutoff_bucket_id=live.cutoff,
                per_page=100,
            )
        assert extra == {CHURNING: 1}
        planner = scheduler._planner
        assert planner is not None
        await planner.refresh(live, 2)
        rows = await schedule_rows(ctx, live)
        plan = planner.plan(rows, ctx.clock())
        assert plan.costs == {CHURNING: 3, STEADY: 2}


async def test_a_learned_release_window_makes_its_bucket_dense_around_the_moment(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    reset_buckets(engine)
    # The scripted day's 19:00 bucket is released into at 07:00 New York time, 0 days ahead.
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO release_windows (market, venue_id, lead_days, release_minute,
                    time_slots, days_seen, first_seen, last_seen, slots_per_release)
                VALUES ('nyc', 7, 0, 420, '{19:00}', 5, :day, :day, 4)
                """
            ),
            {"day": TODAY},
        )
    moment = dt.datetime.combine(TODAY, dt.time(7, 0), tzinfo=NY)
    settings = adaptive(db_url, min_interval_seconds=1.0)  # 2 requests/s: within the budget
    async with replica(settings, db_url, resy, "window", shared=False) as (ctx, _rec):
        scheduler = Scheduler(ctx, clock=ctx.clock)
        planner = scheduler._planner
        assert planner is not None
        live = scheduler.live_range()
        await planner.refresh(live, 2)
        assert [(w.lead_days, w.release_minute) for w in planner.known.windows] == [(0, 420)]
        rows = await schedule_rows(ctx, live)
        polled = [replace(r, last_poll=moment, fresh=False) for r in rows]
        inside = planner.plan(polled, moment + dt.timedelta(seconds=30))
        assert inside.classes[CHURNING] == "release" and inside.classes[STEADY] != "release"
        assert inside.intervals[CHURNING] == ctx.settings.min_interval_seconds
        after = planner.plan(polled, moment + dt.timedelta(minutes=10))
        assert after.classes[CHURNING] != "release"


async def test_a_slow_knowledge_read_keeps_what_was_known_and_the_loop_goes_on(
    db_url: str, engine: Engine, resy: ScriptedResy, caplog: pytest.LogCaptureFixture
) -> None:
    reset_buckets(engine)
    add_events(engine, CHURNING, [1.0])
    settings = adaptive(db_url, db_statement_timeout_ms=300)
    async with replica(settings, db_url, resy, "locked", shared=False) as (ctx, _rec):
        scheduler = Scheduler(ctx, clock=ctx.clock)
        planner = scheduler._planner
        assert planner is not None
        live = scheduler.live_range()
        await planner.refresh(live, 2)
        known = dict(planner.known.decayed)
        assert known[CHURNING] > 0.5  # one event, a second old, a half-life of 10 s
        planner.known.rates_at = -math.inf  # due again
        with engine.connect() as blocker:  # a long writer holds drop_events
            blocker.execute(text("LOCK TABLE drop_events IN ACCESS EXCLUSIVE MODE"))
            await planner.refresh(live, 2)  # the statement times out after 300 ms
            blocker.rollback()
        assert planner.known.decayed == known
        assert "change rates not refreshed" in caplog.text
        await scheduler.start_planned(planner, 8)  # the tick itself goes on
        assert len(scheduler._tasks) == 2
        await asyncio.gather(*scheduler._tasks)
