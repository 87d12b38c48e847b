"""Fixtures for poller tests: a real simulator over HTTP and a migrated database."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import Engine

from services.poller import store
from services.poller.app import build_context
from services.poller.poll import PollContext, poll_bucket
from services.poller.scheduler import Scheduler
from tests.poller.helpers import TODAY, poller_settings
from tests.poller.scripted import ScriptedResy, reset_buckets, scripted_context
from tools.simulator.server import Simulator

NOW = dt.datetime.combine(TODAY, dt.time(12, 0), tzinfo=dt.UTC)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(venues=40, seed=11, clock=lambda: NOW)
    simulator.start(host="127.0.0.1", port=0)
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
async def ctx(db_url: str, sim: Simulator, engine: Engine) -> AsyncIterator[PollContext]:
    context = build_context(poller_settings(db_url, sim.base_url), db_url)
    try:
        yield context
    finally:
        await context.provider.aclose()
        await context.engine.dispose()


def scheduler_for(ctx: PollContext) -> Scheduler:
    """A scheduler whose 'today' is the simulator's fixed day."""
    return Scheduler(ctx, clock=lambda: NOW)


class Clock:
    """A settable clock for the poll context: sell-out durations without waiting."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now

    def tick(self, seconds: float = 60.0) -> dt.datetime:
        self.now += dt.timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def resy() -> ScriptedResy:
    return ScriptedResy()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sctx(
    db_url: str, engine: Engine, resy: ScriptedResy, clock: Clock
) -> AsyncIterator[PollContext]:
    """A poll context over the scripted provider, live buckets reset, a settable clock."""
    reset_buckets(engine)
    settings = poller_settings(db_url, max_attempts=1)
    async with scripted_context(settings, db_url, resy) as context:
        context.clock = clock
        yield context


async def poll_scripted(ctx: PollContext, resy: ScriptedResy, bucket_id: str) -> str:
    """One real poll of `bucket_id` (cooldown ignored); the scripted fault is one-shot."""
    async with ctx.engine.begin() as conn:
        leased = await store.lease_one(conn, owner=ctx.owner, bucket_id=bucket_id, lease_seconds=30)
    assert leased is not None
    try:
        return (await poll_bucket(ctx, leased)).outcome
    finally:
        resy.fault = None
