"""The adaptive schedule in the real loop: real poll code and PostgreSQL, the scripted provider
(tests/poller/scripted.py) through the real ResyProvider, a clock on the scripted day.

The churning bucket is the 19:00 bucket of the scripted day (its slots change all the time);
the 15:00 bucket keeps the same slots and tomorrow's buckets are empty.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, event, text

from services.poller import store
from services.poller.budget import Budget, SharedBudget
from services.poller.metrics import PollerMetrics
from services.poller.poll import PollContext
from services.poller.provider import BucketSpec
from services.poller.ratelimit import RequestBudget
from services.poller.resy import ResyProvider
from services.poller.scheduler import Scheduler
from services.poller.settings import PollerSettings
from services.poller.slots import BucketFetch
from shared.db.engine import make_async_engine
from tests.poller.helpers import TODAY, bucket_row, events, poller_settings
from tests.poller.scripted import ScriptedResy, reset_buckets, slot_key

pytestmark = pytest.mark.db

CHURNING = f"{TODAY.isoformat()}_19:00"
STEADY = f"{TODAY.isoformat()}_15:00"
START = dt.datetime.combine(TODAY, dt.time(12, 0), tzinfo=dt.UTC)
NY = ZoneInfo("America/New_York")


class Moving:
    """Real time, moved to the scripted day: polls are stamped by it, 'today' comes from it."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def __call__(self) -> dt.datetime:
        return START + dt.timedelta(seconds=time.monotonic() - self._t0)


class Recording:
    """The real provider, noting when each bucket was fetched."""

    def __init__(self, inner: ResyProvider) -> None:
        self.inner = inner
        self.name = inner.name
        self.polls: dict[str, list[float]] = {}

    async def fetch_bucket(self, spec: BucketSpec, deadline: float) -> BucketFetch:
        self.polls.setdefault(spec.bucket_id, []).append(time.monotonic())
        return await self.inner.fetch_bucket(spec, deadline)

    async def aclose(self) -> None:
        await self.inner.aclose()


def adaptive(db_url: str, **extra: Any) -> PollerSettings:
    values: dict[str, Any] = {
        "schedule": "adaptive",
        "min_interval_seconds": 0.25,
        "max_interval_seconds": 3.0,
        "change_rate_half_life_seconds": 10.0,
        "requests_per_second": 6.0,
        "tick_seconds": 0.5,
        "max_attempts": 1,
    }
    values.update(extra)
    return poller_settings(db_url, **values)


@asynccontextmanager
async def replica(
    settings: PollerSettings, db_url: str, resy: ScriptedResy, owner: str, *, shared: bool
) -> AsyncIterator[tuple[PollContext, Recording]]:
    """A poll context over `resy`; `shared`: the market's budget in PostgreSQL (budget.py)."""
    engine = make_async_engine(settings, name=f"poller-{owner}", url=db_url)
    budget: Budget = (
        SharedBudget(engine, settings.market, settings.requests_per_second)
        if shared
        else RequestBudget(1000.0)
    )
    inner = ResyProvider(settings, budget, transport=resy.transport())
    recording = Recording(inner)
    ctx = PollContext(settings, engine, recording, PollerMetrics(), owner, clock=Moving())
    try:
        yield ctx, recording
    finally:
        await recording.aclose()
        await engine.dispose()


async def churn(resy: ScriptedResy, stop: asyncio.Event, every: float = 0.3) -> None:
    """A table at 19:xx opens or closes every `every` seconds; 15:00's slots never change."""
    resy.slots = {(1, "14:00"): {2, 4}, (2, "14:30"): {2}, (3, "19:00"): {2, 4}}
    n = 0
    while not stop.is_set():
        n += 1
        key = (10 + n % 5, f"19:{(n * 7) % 60:02d}")
        resy.slots[key] = {2, 4}
        resy.slots.pop((10 + (n + 2) % 5, f"19:{((n - 3) * 7) % 60:02d}"), None)
        await asyncio.sleep(every)


async def run_for(seconds: float, *schedulers: Scheduler, resy: ScriptedResy) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in schedulers]
    churner = asyncio.create_task(churn(resy, stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks, churner)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.slow
async def test_a_churning_bucket_is_polled_more_often_and_quiet_ones_within_the_max(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    reset_buckets(engine)
    settings = adaptive(db_url)
    async with replica(settings, db_url, resy, "solo", shared=False) as (ctx, rec):
        scheduler = Scheduler(ctx, clock=ctx.clock)
        await run_for(12.0, scheduler, resy=resy)
        planner = scheduler._planner
        assert planner is not None and planner.known.decayed.get(CHURNING, 0) > 1
    later = {b: [t for t in ts if t - ts[0] > 4.0] for b, ts in rec.polls.items()}  # baselined
    assert set(rec.polls) == {
        CHURNING,
        STEADY,
        f"{(TODAY + dt.timedelta(days=1)).isoformat()}_15:00",
        f"{(TODAY + dt.timedelta(days=1)).isoformat()}_19:00",
    }
    quiet_counts = [len(ts) for b, ts in later.items() if b != CHURNING]
    assert len(later[CHURNING]) > 2 * max(quiet_counts), {b: len(t) for b, t in later.items()}
    for bucket_id, times in rec.polls.items():  # nobody starves: within the max (+ a poll)
        assert max(gaps(times)) <= settings.max_interval_seconds + 1.0, bucket_id
    # Requests stayed within the planned budget (cost 2 per poll, plus the start's burst).
    polls = sum(len(ts) for ts in rec.polls.values())
    assert polls * 2 <= settings.requests_per_second * 12.0 + 8
    # next_poll_at follows the plan: the churning bucket's is within its short interval.
    row = bucket_row(engine, CHURNING)
    assert row["next_poll_at"] - row["last_polled_at"] < dt.timedelta(seconds=1.5)
    metrics = ctx.metrics
    assert metrics.poll_interval.labels(CHURNING)._value.get() < 1.5
    assert metrics.scheduled_requests.labels("churning")._value.get() > 0


@pytest.mark.slow
async def test_two_replicas_together_stay_within_the_markets_budget(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    reset_buckets(engine)
    # The plan wants 0.25 s intervals for four buckets (32 requests/s); the market allows 4.
    settings = adaptive(db_url, requests_per_second=4.0, max_interval_seconds=60.0)
    async with (
        replica(settings, db_url, resy, "one", shared=True) as (one, rec_one),
        replica(settings, db_url, resy, "two", shared=True) as (two, rec_two),
    ):
        started = resy.requests
        t0 = time.monotonic()
        await run_for(
            8.0, Scheduler(one, clock=one.clock), Scheduler(two, clock=two.clock), resy=resy
        )
        elapsed = time.monotonic() - t0
        sent = resy.requests - started
    assert rec_one.polls and rec_two.polls  # both replicas worked
    burst = 4  # the shared token bucket's burst
    assert sent <= settings.requests_per_second * elapsed + burst, (sent, elapsed)
    assert sent >= settings.requests_per_second * elapsed * 0.5  # and the budget was used


@pytest.mark.slow
async def test_fixed_schedule_polls_every_bucket_once_per_cooldown(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    reset_buckets(engine)
    settings = adaptive(db_url, schedule="fixed", cooldown_seconds=30.0, tick_seconds=0.2)
    async with replica(settings, db_url, resy, "fixed", shared=False) as (ctx, rec):
        # Fixed due-ness compares next_poll_at with the database clock: stamp polls in real
        # time; 'today' stays the scripted day.
        ctx.clock = lambda: dt.datetime.now(dt.UTC)
        scheduler = Scheduler(ctx, clock=lambda: START)
        assert scheduler._planner is None
        await run_for(2.0, scheduler, resy=resy)
    assert {len(ts) for ts in rec.polls.values()} == {1}
    row = bucket_row(engine, CHURNING)
    assert row["next_poll_at"] - row["last_polled_at"] == dt.timedelta(seconds=30)


async def test_a_tick_costs_two_statements_whatever_the_number_of_buckets(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    resy.slots = {(1, "19:00"): {2, 4}}
    for days in (2, 7):
        reset_buckets(engine)
        settings = adaptive(db_url, window_days=days, concurrency=64)
        async with replica(settings, db_url, resy, f"count-{days}", shared=False) as (ctx, _rec):
            scheduler = Scheduler(ctx, clock=ctx.clock)
            await scheduler.ensure_buckets(force=True)
            planner = scheduler._planner
            assert planner is not None
            await planner.refresh(scheduler.live_range(), 2 * days)  # the periodic reads
            statements = count_statements(ctx)
            await scheduler.start_planned(planner, 64)
            assert statements() == 2  # read the live buckets, lease the chosen ones
            started = len(scheduler._tasks)
            assert started == 2 * days  # every bucket is new: all due at once
            await asyncio.gather(*scheduler._tasks)


def count_statements(ctx: PollContext) -> Callable[[], int]:
    seen: list[str] = []

    def before(*args: Any) -> None:
        seen.append(args[2])

    event.listen(ctx.engine.sync_engine, "before_cursor_execute", before)
    return lambda: len(seen)


async def test_a_bucket_polled_by_another_replica_since_the_plan_is_skipped(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    reset_buckets(engine)
    settings = adaptive(db_url)
    async with replica(settings, db_url, resy, "late", shared=False) as (ctx, _rec):
        scheduler = Scheduler(ctx, clock=ctx.clock)
        planner = scheduler._planner
        assert planner is not None
        live = scheduler.live_range()
        async with ctx.engine.begin() as conn:
            rows = await store.read_schedule_state(
                conn,
                first_day=live.first,
                last_day=live.last,
                cutoff_bucket_id=live.cutoff,
                now=ctx.clock(),
            )
        with engine.begin() as conn:  # another replica polls it between read and lease
            conn.execute(
                text("UPDATE discovery_buckets SET last_polled_at = now() WHERE bucket_id = :b"),
                {"b": CHURNING},
            )
        async with ctx.engine.begin() as conn:
            leased = await planner._lease(conn, [(r.bucket_id, r.last_polled_at) for r in rows])
        assert {lb.bucket_id for lb in leased} == {r.bucket_id for r in rows} - {CHURNING}


async def test_a_replica_whose_clock_runs_ten_minutes_behind_still_polls(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    """Due-ness is decided on the database clock: a replica 10 minutes behind the one that
    polled last finds the buckets due once their interval has passed, and its own polls do not
    look 10 minutes overdue to the other replica."""
    reset_buckets(engine)
    resy.slots = {}  # empty answers: a polled bucket is no longer fresh
    settings = adaptive(db_url, max_interval_seconds=1.0)
    async with (
        replica(settings, db_url, resy, "on-time", shared=False) as (right, _rec),
        replica(settings, db_url, resy, "behind", shared=False) as (late, rec),
    ):
        on_time = right.clock
        late.clock = lambda: on_time() - dt.timedelta(minutes=10)
        first, second = Scheduler(right, clock=right.clock), Scheduler(late, clock=late.clock)
        assert first._planner is not None and second._planner is not None
        await first.start_planned(first._planner, 8)
        assert len(first._tasks) == 2
        await asyncio.gather(*first._tasks)
        await asyncio.sleep(1.2)  # past the maximum interval
        await second.start_planned(second._planner, 8)
        assert {t.get_name() for t in second._tasks} == {f"poll-{STEADY}", f"poll-{CHURNING}"}
        await asyncio.gather(*second._tasks)
        plan, _ = await first._planner.tick(first.live_range(), 0)  # plan only
        for bucket_id in (STEADY, CHURNING):  # just polled: not due, let alone 10 min overdue
            assert plan.next_due[bucket_id] > plan.now - dt.timedelta(seconds=0.5), bucket_id
    assert set(rec.polls) == {STEADY, CHURNING}


def add_events(engine: Engine, bucket_id: str, ages: list[float], kind: str = "NEW_DROP") -> None:
    """Events of `bucket_id` created `ages` seconds ago (by the database clock)."""
    with engine.begin() as conn:
        for n, age in enumerate(ages):
            conn.execute(
                text(
                    """
                    INSERT INTO drop_events (bucket_date, bucket_id, market, provider, slot_id,
                        venue_id, event_type, opened_at, slot_date, slot_time, seating_type,
                        party_sizes, time_slot, time_bucket, dedupe_key, created_at)
                    VALUES (:day, :b, 'nyc', 'resy', :slot, 1, :kind, now(), :day, '19:00',
                        'Dining Room', '{2}', '19:00', 'prime', :key,
                        now() - make_interval(secs => :age))
                    """
                ),
                {
                    "day": TODAY,
                    "b": bucket_id,
                    "slot": f"s{n}",
                    "kind": kind,
                    "key": f"{kind}:{bucket_id}:{n}:{age}",
                    "age": age,
                },
            )


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
        async with ctx.engine.begin() as conn:
            rows = await store.read_schedule_state(
                conn,
                first_day=live.first,
                last_day=live.last,
                cutoff_bucket_id=live.cutoff,
                now=ctx.clock(),
            )
        plan = planner.plan(rows, ctx.clock())
        assert plan.costs == {CHURNING: 3, STEADY: 2}


async def short_drops(resy: ScriptedResy, stop: asyncio.Event, truth: list[str]) -> None:
    """After the buckets have baselined, a table at 19:xx opens every second and is taken
    three seconds later; `truth` gets each one's slot id."""
    resy.slots = {(1, "14:00"): {2, 4}, (3, "19:00"): {2, 4}}
    await asyncio.sleep(5.0)
    n = 0
    while not stop.is_set():
        key = (20 + n, f"19:{(n * 7) % 60:02d}")
        resy.slots[key] = {2, 4}
        truth.append(slot_key(*key))
        asyncio.get_running_loop().call_later(3.0, resy.slots.pop, key, None)
        n += 1
        await asyncio.sleep(1.0)


@pytest.mark.slow
async def test_the_adaptive_schedule_catches_most_drops_that_live_three_seconds(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    """The fixed 30 s schedule would see about one in ten of them."""
    reset_buckets(engine)
    settings = adaptive(db_url, max_interval_seconds=10.0)
    truth: list[str] = []
    async with replica(settings, db_url, resy, "recall", shared=False) as (ctx, rec):
        stop = asyncio.Event()
        loop = asyncio.create_task(Scheduler(ctx, clock=ctx.clock).run(stop))
        dropper = asyncio.create_task(short_drops(resy, stop, truth))
        await asyncio.sleep(17.0)
        stop.set()
        await asyncio.gather(loop, dropper)
    dropped = {e["slot_id"] for e in events(engine, CHURNING) if e["event_type"] == "NEW_DROP"}
    judged = truth[:-3]  # the last ones may not have been polled yet
    caught = [slot for slot in judged if slot in dropped]
    assert len(judged) >= 8
    assert len(caught) >= 0.8 * len(judged), (len(caught), len(judged))
    assert dropped <= set(truth)  # no false drops
    steady = rec.polls[STEADY]
    assert max(gaps(steady)) <= settings.max_interval_seconds + 1.0


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
        async with ctx.engine.begin() as conn:
            rows = await store.read_schedule_state(
                conn,
                first_day=live.first,
                last_day=live.last,
                cutoff_bucket_id=live.cutoff,
                now=ctx.clock(),
            )
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
