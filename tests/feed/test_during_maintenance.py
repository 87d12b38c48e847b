"""The feed keeps answering while the daily maintenance aggregates and prunes."""

from __future__ import annotations

import asyncio
import datetime as dt

from pydantic import SecretStr
from sqlalchemy import Engine

from services.maintenance.run import run
from services.maintenance.settings import MaintenanceSettings
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.feed.conftest import NOW, TODAY
from tests.maintenance.helpers import Ev, insert_events
from tests.seeding import Seeder, SeedSlot


async def test_feed_answers_during_a_prune(
    db_url: str, engine: Engine, seeder: Seeder, stub: feed_pb2_grpc.FeedServiceStub
) -> None:
    await seeder.open(
        [SeedSlot(v, TODAY, "19:00") for v in range(1, 6)], at=NOW - dt.timedelta(seconds=1)
    )
    past = [TODAY - dt.timedelta(days=n) for n in (1, 2, 3)]
    insert_events(
        engine,
        [
            Ev(v, day, "NEW_DROP", dt.datetime.combine(day, dt.time(18), tzinfo=dt.UTC))
            for day in past
            for v in range(1, 400)
        ],
    )
    settings = MaintenanceSettings(database_url=SecretStr(db_url))
    job = asyncio.get_running_loop().run_in_executor(None, run, settings, engine, NOW)
    answers = 0
    while not job.done():
        reply = await stub.StillOpen(feed_pb2.StillOpenRequest(min_age_seconds=0), timeout=5)
        assert {i.venue.id for i in reply.items} == set(range(1, 6))
        answers += 1
    summary = await job
    assert summary.ran and summary.steps["prune_events"].detail["partitions"] == 3
    assert answers >= 1
    reply = await stub.StillOpen(feed_pb2.StillOpenRequest(min_age_seconds=0), timeout=5)
    assert {i.venue.id for i in reply.items} == set(range(1, 6))
