"""Resuming WatchDrops: nothing skipped (writers commit out of id order), at-least-once with
the same ids, and an expired cursor is OUT_OF_RANGE."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import grpc
from sqlalchemy import text

from shared.gen.dropwatch.feed.v1 import feed_pb2
from tests.feed.conftest import NOW, TODAY
from tests.feed.watch_support import (
    GatedEngine,
    Recorder,
    change_id,
    sample,
    serving,
    venue_of,
)
from tests.seeding import Seeder, SeedSlot

Request = feed_pb2.WatchDropsRequest
STREAMED = (
    "SELECT id FROM drop_events WHERE event_type = 'NEW_DROP' OR drop_event_id IS NOT NULL"
    " ORDER BY xact_id, id"
)


async def streamed_in_order(seeder: Seeder) -> list[int]:
    async with seeder.engine.connect() as conn:
        return list((await conn.execute(text(STREAMED))).scalars())


async def late_and_early(seeder: Seeder, held: Seeder, gated: GatedEngine, n: int) -> None:
    """A poll that writes first and commits last, and one that writes and commits between."""
    gated.hold()
    late = asyncio.create_task(held.open([SeedSlot(100 + n, TODAY, "15:00")], at=NOW))
    await gated.written.wait()
    await seeder.open([SeedSlot(n, TODAY, "19:00")], at=NOW + dt.timedelta(seconds=n))
    gated.gate.set()
    await late


async def test_a_consumer_resuming_again_and_again_misses_nothing_and_sees_commit_order(
    db_url: str, seeder: Seeder
) -> None:
    gated = GatedEngine(seeder.engine)
    held = Seeder(gated, TODAY)  # type: ignore[arg-type]
    rng = random.Random(15)
    received: list[feed_pb2.WatchDropsResponse] = []
    async with serving(db_url, watch_check_seconds=0.1) as (_server, stub):
        first = Recorder.start(stub, Request(heartbeat_seconds=1))
        await first.until(lambda r: bool(r.messages))
        cursor = first.last_cursor()
        await first.close()

        async def write() -> None:
            for n in range(1, 7):
                await late_and_early(seeder, held, gated, n)
                if n % 2:  # and closes, so the stream carries every kind it can
                    await seeder.close([SeedSlot(n, TODAY, "19:00")], at=NOW + dt.timedelta(n))

        writer = asyncio.create_task(write())
        while not writer.done():
            stream = Recorder.start(stub, Request(cursor=cursor, heartbeat_seconds=1))
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            await stream.close()
            received += stream.live()
            cursor = stream.last_cursor() if stream.messages else cursor
        await writer
        expected = await streamed_in_order(seeder)
        final = Recorder.start(stub, Request(cursor=cursor, heartbeat_seconds=1))
        seen = {change_id(m) for m in received}
        await final.until(lambda r: seen | {change_id(m) for m in r.live()} >= set(expected))
        await final.close()
        received += final.live()
    first_seen: dict[int, feed_pb2.WatchDropsResponse] = {}
    for message in received:
        earlier = first_seen.setdefault(change_id(message), message)
        # A duplicate (only across a resume) is the same change, with the same ids.
        assert earlier.WhichOneof("message") == message.WhichOneof("message")
        assert venue_of(earlier) == venue_of(message)
    assert list(first_seen) == expected  # every change once, in commit order
    assert len(expected) == 6 * 2 + 3  # six late, six early openings, three closes


async def test_resuming_from_an_older_cursor_repeats_with_the_same_ids(
    db_url: str, seeder: Seeder
) -> None:
    async with serving(db_url) as (_server, stub):
        stream = Recorder.start(stub, Request(heartbeat_seconds=1))
        await stream.until(lambda r: bool(r.messages))
        for venue in (1, 2, 3):
            await seeder.open([SeedSlot(venue, TODAY, "19:00")], at=NOW)
        await stream.until(lambda r: len(r.live()) == 3)
        await stream.close()
        ids = [change_id(m) for m in stream.live()]
        again = Recorder.start(stub, Request(cursor=stream.live()[0].cursor))
        await again.until(lambda r: len(r.live()) == 2)
        await asyncio.sleep(0.3)
        await again.close()
        assert [change_id(m) for m in again.live()] == ids[1:]
        assert [m.cursor for m in again.live()] == [m.cursor for m in stream.live()[1:]]


async def test_an_expired_cursor_is_out_of_range_naming_the_oldest_point(
    db_url: str, seeder: Seeder
) -> None:
    async with serving(db_url) as (server, stub):
        stream = Recorder.start(stub, Request(heartbeat_seconds=1))
        await stream.until(lambda r: bool(r.messages))
        await stream.close()
        async with seeder.engine.begin() as conn:  # maintenance pruned past the cursor
            await conn.execute(
                text(
                    "INSERT INTO change_floor (pruned_through, pruned_day, pruned_at)"
                    " VALUES (pg_current_xact_id(), :day, :at)"
                ),
                {"day": TODAY, "at": NOW},
            )
        resumed = Recorder.start(stub, Request(cursor=stream.last_cursor()))
        error = await resumed.ended()
        assert error.code() is grpc.StatusCode.OUT_OF_RANGE
        assert "oldest resumable point" in (error.details() or "")
        assert not resumed.messages
        assert sample(server, "dropwatch_feed_watch_streams_ended_total", reason="expired") == 1
