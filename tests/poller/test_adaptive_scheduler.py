"""The adaptive schedule in the real loop (tests/poller/adaptive_support.py): churning buckets
polled more often, quiet ones within the maximum, replicas within the budget, two statements a
tick, a replica whose clock is wrong, and short drops caught.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from services.poller.poll import PollContext
from services.poller.scheduler import Scheduler
from tests.poller.adaptive_support import (
    CHURNING,
    START,
    STEADY,
    Slow,
    adaptive,
    gaps,
    replica,
    run_for,
    schedule_rows,
)
from tests.poller.helpers import TODAY, bucket_row, events
from tests.poller.scripted import ScriptedResy, reset_buckets, slot_key

pytestmark = pytest.mark.db


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
        rows = await schedule_rows(ctx, live)
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


async def test_poll_once_polls_each_due_bucket_once_though_its_fetch_outlasts_the_cooldown(
    db_url: str, engine: Engine, resy: ScriptedResy
) -> None:
    """A poll is dated from its fetch's start, so a bucket whose fetch took longer than its
    cooldown is due again as soon as it is written: `dropwatch poll --once` must still end."""
    reset_buckets(engine)
    # One at a time: the repolled bucket, due first again, would fill every batch.
    settings = adaptive(db_url, schedule="fixed", cooldown_seconds=0.2, concurrency=1)
    async with replica(settings, db_url, resy, "once", shared=False) as (ctx, rec):
        ctx.clock = lambda: dt.datetime.now(dt.UTC)  # due-ness by the database clock
        ctx.provider = Slow(rec, 0.3)
        outcomes = await asyncio.wait_for(Scheduler(ctx, clock=lambda: START).poll_once(), 60)
    assert len(rec.polls) == 4 and {len(ts) for ts in rec.polls.values()} == {1}, rec.polls
    assert sorted(o.bucket_id for o in outcomes) == sorted(rec.polls)
    with engine.connect() as conn:  # no lease left behind
        held = conn.execute(
            text("SELECT count(*) FROM discovery_buckets WHERE lease_owner IS NOT NULL")
        )
        assert held.scalar_one() == 0
