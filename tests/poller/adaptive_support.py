"""The adaptive schedule's test harness: real poll code and PostgreSQL, the scripted provider
(tests/poller/scripted.py) through the real ResyProvider, a clock on the scripted day.

The churning bucket is the 19:00 bucket of the scripted day (its slots change all the time);
the 15:00 bucket keeps the same slots and tomorrow's buckets are empty.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, text

from services.poller import store
from services.poller.adaptive import LiveRange
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
from tests.poller.helpers import TODAY, poller_settings
from tests.poller.scripted import ScriptedResy

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


async def schedule_rows(ctx: PollContext, live: LiveRange) -> list[store.ScheduleRow]:
    """The live buckets' schedule state, as a tick reads it (sql.SCHEDULE_STATE)."""
    async with ctx.engine.begin() as conn:
        return await store.read_schedule_state(
            conn,
            first_day=live.first,
            last_day=live.last,
            cutoff_bucket_id=live.cutoff,
            now=ctx.clock(),
        )


class Slow:
    """The recording provider, each fetch taking `seconds` longer (a slow provider, or
    requests queued behind the budget)."""

    def __init__(self, inner: Recording, seconds: float) -> None:
        self.inner, self.name, self.seconds = inner, inner.name, seconds

    async def fetch_bucket(self, spec: BucketSpec, deadline: float) -> BucketFetch:
        fetched = await self.inner.fetch_bucket(spec, deadline)
        await asyncio.sleep(self.seconds)
        return fetched

    async def aclose(self) -> None:
        await self.inner.aclose()
