"""Fixtures for poller tests: a real simulator over HTTP and a migrated database."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import Engine

from services.poller.app import build_context
from services.poller.poll import PollContext
from services.poller.scheduler import Scheduler
from tests.poller.helpers import TODAY, poller_settings
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
