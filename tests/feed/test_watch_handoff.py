"""WatchDrops from the hub: initial state then live with writers in flight (no gap, no
duplicate), a missed NOTIFY caught by the periodic check, one database read per commit."""

from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy import text

from shared.gen.dropwatch.feed.v1 import feed_pb2
from tests.feed.conftest import NOW, TODAY
from tests.feed.watch_support import (
    GatedEngine,
    Recorder,
    change_id,
    sample,
    serving,
    subscribed,
    venue_of,
)
from tests.seeding import Seeder, SeedSlot

Request = feed_pb2.WatchDropsRequest
READS = "dropwatch_feed_watch_change_reads_total"


def slot(venue: int, start: str = "19:00") -> SeedSlot:
    return SeedSlot(venue, TODAY, start)


async def test_initial_state_then_live_with_writers_in_flight_has_no_gap_and_no_duplicate(
    db_url: str, seeder: Seeder
) -> None:
    gated = GatedEngine(seeder.engine)
    held = Seeder(gated, TODAY)  # type: ignore[arg-type]
    await seeder.open([slot(1), slot(2)], at=NOW)
    async with serving(db_url) as (_server, stub):
        gated.hold()  # 3: written before the stream starts, committed after its snapshot
        late = asyncio.create_task(held.open([slot(3, "15:00")], at=NOW))
        await gated.written.wait()
        # 4: a later transaction that commits before the snapshot: in the initial state, and
        # at or above its xmin (the exclusion must keep it from coming again)
        await seeder.open([slot(4)], at=NOW)
        stream = Recorder.start(stub, Request(send_initial_state=True, heartbeat_seconds=1))
        await stream.until(lambda r: any(m.HasField("initial_state_end") for m in r.messages))
        gated.gate.set()
        await late
        await seeder.open([slot(5)], at=NOW)
        await seeder.close([slot(1)], at=NOW + dt.timedelta(seconds=30))
        await stream.until(lambda r: len(r.live()) >= 3)
        await asyncio.sleep(0.5)  # anything repeated would come now
        await stream.close()
    kinds = [m.WhichOneof("message") for m in stream.messages if not m.HasField("progress")]
    initial = [venue_of(m) for m in stream.messages if m.initial]
    end = next(m for m in stream.messages if m.HasField("initial_state_end"))
    assert kinds[: len(initial) + 1] == ["opened"] * len(initial) + ["initial_state_end"]
    assert sorted(initial) == [1, 2, 4] and end.initial_state_end.items == 3 and end.cursor
    assert not any(m.cursor for m in stream.messages if m.initial)
    live = [(m.WhichOneof("message"), venue_of(m)) for m in stream.live()]
    assert live == [("opened", 3), ("opened", 5), ("closed", 1)]
    opened = [m.opened.event_id for m in stream.messages if m.HasField("opened")]
    assert len(opened) == len(set(opened)) == 5


async def test_a_missed_notify_is_caught_by_the_periodic_check(db_url: str, seeder: Seeder) -> None:
    async with serving(db_url, watch_check_seconds=0.3) as (server, stub):
        hub = server.watch.hub
        listener = hub._tasks[0]
        listener.cancel()  # no NOTIFY reaches this replica any more
        await asyncio.gather(listener, return_exceptions=True)
        stream = Recorder.start(stub, Request(heartbeat_seconds=60))
        await subscribed(server, 1)
        notified = sample(server, READS, trigger="notify")
        await seeder.open([slot(1)], at=NOW)
        await stream.until(lambda r: len(r.live()) == 1, timeout=3)
        await stream.close()
        assert sample(server, READS, trigger="notify") == notified
        assert sample(server, READS, trigger="check") > 0


async def test_one_read_per_commit_whatever_the_number_of_streams(
    db_url: str, seeder: Seeder
) -> None:
    filters = [
        feed_pb2.FeedFilter(),
        feed_pb2.FeedFilter(venue_ids=[1]),
        feed_pb2.FeedFilter(venue_ids=[2, 3]),
        feed_pb2.FeedFilter(time_slots=["19:00"]),
        feed_pb2.FeedFilter(party_sizes=[4]),
    ]
    # No periodic reads in this test: only the poller's NOTIFYs wake the reader.
    async with serving(db_url, watch_check_seconds=60) as (server, stub):
        streams = [Recorder.start(stub, Request(filter=filters[i % 5])) for i in range(50)]
        await subscribed(server, 50)
        assert sample(server, "dropwatch_feed_watch_streams") == 50
        reads = sample(server, READS, trigger="notify")
        commits = sample(server, "dropwatch_feed_watch_commits_total")
        for venue in range(1, 6):
            await seeder.open([slot(venue)], at=NOW)
        everything = streams[0::5]
        await asyncio.gather(*(s.until(lambda r: len(r.live()) == 5) for s in everything))
        await asyncio.gather(*(s.until(lambda r: len(r.live()) == 1) for s in streams[1::5]))
        for stream in streams:
            await stream.close()
        read = sample(server, READS, trigger="notify") - reads
        assert sample(server, "dropwatch_feed_watch_commits_total") - commits == 5
        assert 1 <= read <= 5  # one read per commit (fewer when NOTIFYs coalesce), not 50
        assert sample(server, "dropwatch_feed_watch_catch_up_reads_total") == 0
    assert [len(s.live()) for s in streams[:5]] == [5, 1, 2, 5, 5]
    ids = [change_id(m) for m in streams[0].live()]
    assert all([change_id(m) for m in s.live()] == ids for s in everything)


async def test_the_listening_connection_comes_back_after_it_is_killed(
    db_url: str, seeder: Seeder
) -> None:
    kill = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    async with serving(db_url, watch_check_seconds=60) as (server, stub):
        stream = Recorder.start(stub, Request())
        async with seeder.engine.connect() as conn:
            assert (await conn.execute(kill)).scalar_one() >= 1  # the hub's (and the cache's)
        await asyncio.sleep(1.5)  # the listener's first retry comes after 0.5 s
        notified = sample(server, READS, trigger="notify")
        await seeder.open([slot(1)], at=NOW)
        await stream.until(lambda r: len(r.live()) == 1, timeout=5)
        await stream.close()
        assert sample(server, READS, trigger="notify") > notified


async def test_without_streams_the_reader_reads_nothing_and_starts_streams_at_the_horizon(
    db_url: str, seeder: Seeder
) -> None:
    async with serving(db_url, watch_check_seconds=0.1) as (server, stub):
        for venue in (1, 2, 3):
            await seeder.open([slot(venue)], at=NOW)
        await asyncio.sleep(0.5)
        reads = sample(server, READS, trigger="notify") + sample(server, READS, trigger="check")
        assert reads == 0  # only the horizon followed
        stream = Recorder.start(stub, Request())
        await asyncio.sleep(0.3)
        await seeder.open([slot(4)], at=NOW)
        await stream.until(lambda r: len(r.live()) == 1)
        await asyncio.sleep(0.3)
        await stream.close()
    assert [venue_of(m) for m in stream.live()] == [4]  # from the moment it opened, not before
