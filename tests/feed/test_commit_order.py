"""One boundary per moment, visibility in commit order (docs/architecture.md, "Commit order").

Findings: JustOpened and StillOpen asked together overlapped or left a gap when one of them was
a cached answer (each took its own time, up to the cache TTL apart); and a poll that took its
`opened_at` before a walk's first page and committed after it changed the walk's later pages.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import psycopg
import pytest

from services.feed.server import FeedServer, start_feed
from shared.db.urls import libpq_url
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.feed.conftest import NOW, TODAY, feed_settings
from tests.seeding import Seeder, SeedSlot

Stub = feed_pb2_grpc.FeedServiceStub
LAG = "dropwatch_feed_commit_horizon_lag_transactions"


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


@asynccontextmanager
async def serving(db_url: str, ttl: float) -> AsyncIterator[tuple[FeedServer, Stub]]:
    server = await start_feed(feed_settings(db_url, cache_ttl_seconds=ttl), db_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield server, feed_pb2_grpc.FeedServiceStub(channel)
    finally:
        await server.stop(0)


def events(reply: feed_pb2.JustOpenedResponse | feed_pb2.StillOpenResponse) -> set[int]:
    return {item.event_id for item in reply.items}


@pytest.mark.parametrize("ttl", [2.0, 0.0])
async def test_just_opened_and_still_open_of_one_moment_split_the_data_exactly_once(
    db_url: str, seeder: Seeder, ttl: float
) -> None:
    # Drops on both sides of the 600 s edge, closer to it than the clock moves below.
    ages = (598.5, 599, 599.5, 600, 600.5, 601, 601.5)
    for venue, age in enumerate(ages, start=1):
        await seeder.open([SeedSlot(venue, TODAY, "19:00")], at=ago(age))
    async with serving(db_url, ttl) as (server, stub):  # started after the polls' NOTIFYs
        clock: list[dt.datetime] = [NOW]
        server.servicer.clock = lambda: clock[0]
        server.servicer.boundaries.monotonic = lambda: 0.0  # one moment, however slow the host
        just = await stub.JustOpened(feed_pb2.JustOpenedRequest())
        clock[0] = NOW + dt.timedelta(seconds=1.5)  # the second call comes a little later
        still = await stub.StillOpen(feed_pb2.StillOpenRequest())
        just_again = await stub.JustOpened(feed_pb2.JustOpenedRequest())
    assert events(just) == events(just_again)
    assert not events(just) & events(still), "the two lists repeat each other"
    assert len(events(just) | events(still)) == len(ages), "a drop is in neither list"
    assert len(events(just)) == 4  # ages 598.5-600: within the window (inclusive) of NOW


async def test_a_poll_committed_after_the_first_page_changes_no_later_page(
    seeder: Seeder, stub: Stub, feed: FeedServer
) -> None:
    a, b, c = (SeedSlot(venue, TODAY, "19:00") for venue in (1, 2, 3))
    await seeder.open([a], at=ago(30))
    await seeder.open([b], at=ago(20))
    await seeder.open([c], at=ago(10))
    feed.servicer.cache.invalidate()  # the NOTIFY of the last poll may not have landed yet
    first = await stub.JustOpened(feed_pb2.JustOpenedRequest(limit=2))
    assert [i.venue.id for i in first.items] == [3, 2] and first.next_page_token
    # A poll that took its time: its opened_at is before the first page, its commit after.
    # Venue 1 gets a newer slot on the same date, which would have hidden `a` (one item per
    # venue and date) and slipped in behind the cursor instead.
    await seeder.open([SeedSlot(1, TODAY, "19:30")], at=ago(25))
    rest = await stub.JustOpened(
        feed_pb2.JustOpenedRequest(limit=2, page_token=first.next_page_token)
    )
    assert [(i.venue.id, i.slot_time) for i in rest.items] == [(1, "19:00")]
    assert not rest.next_page_token
    feed.servicer.cache.invalidate()
    fresh = await stub.JustOpened(feed_pb2.JustOpenedRequest())  # a new walk sees the poll
    assert [(i.venue.id, i.slot_time) for i in fresh.items][-1] == (1, "19:30")


async def test_a_write_in_flight_holds_back_what_commits_after_it(
    db_url: str, seeder: Seeder, stub: Stub, feed: FeedServer
) -> None:
    """The cost of commit order: a reader sees a transaction only once every older writer has
    ended (here an open transaction holding a transaction id)."""
    slot = SeedSlot(1, TODAY, "19:00")
    writer = await psycopg.AsyncConnection.connect(libpq_url(db_url))
    try:
        await writer.execute("SELECT pg_current_xact_id()")  # holds a transaction id, open
        await seeder.open([slot], at=ago(10))  # commits while the older writer is in flight
        renew: Callable[[], None] = feed.servicer.cache.invalidate  # as a poll's NOTIFY does
        renew()
        held = await stub.JustOpened(feed_pb2.JustOpenedRequest())
        assert not held.items
        lag = feed.registry.get_sample_value(LAG) or 0
        assert lag >= 2  # the writer and the poll
        await writer.commit()
        renew()
        shown = await stub.JustOpened(feed_pb2.JustOpenedRequest())
        assert [i.venue.id for i in shown.items] == [1]
        assert (feed.registry.get_sample_value(LAG) or 0) < lag
    finally:
        await writer.close()


async def test_a_size_added_after_the_first_page_changes_no_later_page(
    seeder: Seeder, stub: Stub, feed: FeedServer
) -> None:
    """Found by the hunt: a party-size change is an UPDATE that kept the row's writing
    transaction, so a walk's later page saw it (here it hid `a` and slipped in behind the
    cursor). A resized slot now counts as written by the resizing poll."""
    a, b, c = (SeedSlot(venue, TODAY, "19:00", party_sizes=(4,)) for venue in (1, 2, 3))
    await seeder.open([a], at=ago(30))
    await seeder.open([SeedSlot(1, TODAY, "19:30", party_sizes=(2,))], at=ago(25))
    await seeder.open([b], at=ago(20))
    await seeder.open([c], at=ago(10))
    feed.servicer.cache.invalidate()  # the NOTIFY of the last poll may not have landed yet
    for_four = feed_pb2.FeedFilter(party_sizes=[4])
    first = await stub.JustOpened(feed_pb2.JustOpenedRequest(filter=for_four, limit=2))
    assert [i.venue.id for i in first.items] == [3, 2] and first.next_page_token
    # A slow poll: venue 1's 19:30 slot becomes bookable for 4 as well.
    await seeder.open([SeedSlot(1, TODAY, "19:30", party_sizes=(2, 4))], at=ago(5))
    rest = await stub.JustOpened(
        feed_pb2.JustOpenedRequest(filter=for_four, limit=2, page_token=first.next_page_token)
    )
    assert [(i.venue.id, i.slot_time) for i in rest.items] == [(1, "19:00")]
    feed.servicer.cache.invalidate()
    fresh = await stub.JustOpened(feed_pb2.JustOpenedRequest(filter=for_four))
    assert (1, "19:30") in [(i.venue.id, i.slot_time) for i in fresh.items]
