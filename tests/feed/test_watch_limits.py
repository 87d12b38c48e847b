"""WatchDrops limits and ends: a slow consumer, the stream limit, the maximum age, shutdown,
and a database that stays away. Each end carries the cursor to resume from."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from services.feed.server import start_feed
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.feed.conftest import NOW, TODAY, feed_settings
from tests.feed.watch_support import Recorder, change_id, end_cursor, sample, serving, subscribed
from tests.seeding import Seeder, SeedSlot

Request = feed_pb2.WatchDropsRequest
ENDED = "dropwatch_feed_watch_streams_ended_total"
# A client whose receive window stays at HTTP/2's 64 KiB: a consumer that does not read fills it
# after ~150 messages.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0)]


def slots(first: int, count: int) -> list[SeedSlot]:
    return [SeedSlot(venue, TODAY, "19:00") for venue in range(first, first + count)]


async def test_a_consumer_that_never_reads_is_ended_alone_with_its_cursor(
    db_url: str, seeder: Seeder
) -> None:
    async with serving(db_url, watch_buffer_messages=500) as (server, stub):
        address = f"127.0.0.1:{server.port}"
        async with grpc.aio.insecure_channel(address, options=SMALL_WINDOW) as channel:
            stalled = feed_pb2_grpc.FeedServiceStub(channel).WatchDrops(Request())
            healthy = Recorder.start(stub, Request())
            await subscribed(server, 2)
            for first in (1, 401):  # two releases of 400 drops, each in one commit
                await seeder.open(slots(first, 400), at=NOW)
                await healthy.until(lambda r, n=first + 399: len(r.live()) == n)
            assert sample(server, ENDED, reason="slow") == 1  # ended while the other flowed
            assert sample(server, "dropwatch_feed_watch_streams") == 1
            got: list[feed_pb2.WatchDropsResponse] = []
            try:
                async for message in stalled:  # the consumer wakes up: what was sent, then
                    if not message.HasField("progress"):
                        got.append(message)
            except grpc.aio.AioRpcError as exc:
                error = exc
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            cursor = end_cursor(error)
            assert 0 < len(got) < 800
            resumed = Recorder.start(stub, Request(cursor=cursor))
            await resumed.until(lambda r: len({*map(change_id, got + r.live())}) == 800)
            await resumed.close()
        await healthy.close()
    # The message in flight when it was ended may come again on resume (at-least-once).
    ids = [change_id(m) for m in got + resumed.live()]
    assert list(dict.fromkeys(ids)) == [change_id(m) for m in healthy.live()]
    assert len(ids) - len(set(ids)) <= 1


async def test_streams_beyond_the_limit_are_refused_and_do_not_count_against_unary_calls(
    db_url: str,
) -> None:
    async with serving(db_url, watch_max_streams=2, max_concurrent_rpcs=1) as (server, stub):
        open_ = [Recorder.start(stub, Request(heartbeat_seconds=1)) for _ in range(2)]
        for stream in open_:
            await stream.until(lambda r: bool(r.messages))
        refused = Recorder.start(stub, Request())
        error = await refused.ended(timeout=2)
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 2 streams" in (error.details() or "") and not refused.messages
        assert sample(server, ENDED, reason="limit") == 1
        cursor = open_[0].last_cursor()  # a resuming stream gets its own cursor back
        error = await Recorder.start(stub, Request(cursor=cursor)).ended(timeout=2)
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and end_cursor(error) == cursor
        await stub.JustOpened(feed_pb2.JustOpenedRequest())  # the unary limit of 1 is free
        for stream in open_:
            await stream.close()


async def test_a_stream_ends_aborted_at_its_maximum_age_with_its_cursor(
    db_url: str, seeder: Seeder
) -> None:
    async with serving(db_url, watch_max_age_seconds=1) as (server, stub):
        started = time.monotonic()
        stream = Recorder.start(stub, Request(heartbeat_seconds=1))
        error = await stream.ended(timeout=5)
        assert 0.85 <= time.monotonic() - started < 2.5
        assert error.code() is grpc.StatusCode.ABORTED
        cursor = end_cursor(error)
        await seeder.open(slots(1, 1), at=NOW)
        resumed = Recorder.start(stub, Request(cursor=cursor))
        await resumed.until(lambda r: len(r.live()) == 1)
        assert sample(server, ENDED, reason="max_age") >= 1


async def test_stop_turns_health_not_serving_then_ends_every_stream_unavailable(
    db_url: str,
) -> None:
    server = await start_feed(feed_settings(db_url), db_url)
    seen: list[tuple[str, float]] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())

        async def watch_health() -> None:
            async for reply in health:
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    seen.append(("not_serving", time.monotonic()))
                    health.cancel()  # an open health watch would hold the server to its grace
                    return

        health_task = asyncio.create_task(watch_health())
        streams = [
            Recorder.start(feed_pb2_grpc.FeedServiceStub(channel), Request(heartbeat_seconds=1))
            for _ in range(3)
        ]
        for stream in streams:
            await stream.until(lambda r: bool(r.messages))
        started = time.monotonic()
        stopping = asyncio.create_task(server.stop(5.0))
        for stream in streams:
            error = await stream.ended(timeout=5)
            seen.append(("stream", time.monotonic()))
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (error.details() or "")
            end_cursor(error)
        await asyncio.wait_for(health_task, 5)
        await stopping
    assert time.monotonic() - started < 5.0  # within the grace period
    first = min(seen, key=lambda s: s[1])
    assert first[0] == "not_serving"
    assert sample(server, ENDED, reason="shutdown") == 3


async def test_a_database_that_stays_away_ends_streams_unavailable_without_moving_cursors(
    db_url: str, seeder: Seeder
) -> None:
    async with serving(db_url, watch_check_seconds=0.1, watch_unavailable_seconds=1.5) as (
        server,
        stub,
    ):
        stream = Recorder.start(stub, Request(heartbeat_seconds=1))
        await stream.until(lambda r: len(r.messages) >= 1)
        async with seeder.engine.begin() as conn:  # the change table is gone: reads fail
            await conn.execute(text("ALTER TABLE drop_events RENAME TO drop_events_away"))
        down = time.monotonic()
        before = list(stream.messages)
        error = await stream.ended(timeout=5)
        assert 1.0 <= time.monotonic() - down < 4
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert (error.details() or "").startswith("database unavailable")
        cursors = [m.cursor for m in stream.messages[len(before) :]]
        assert len(set(cursors)) <= 1  # at most one progress already on its way, no new point
        assert end_cursor(error) in {before[-1].cursor, *cursors}
        assert sample(server, ENDED, reason="database") == 1
        refused = await Recorder.start(stub, Request()).ended()
        assert refused.code() is grpc.StatusCode.UNAVAILABLE
        async with seeder.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE drop_events_away RENAME TO drop_events"))
        await seeder.open(slots(1, 1), at=NOW)
        back = Recorder.start(stub, Request(cursor=end_cursor(error)))
        await back.until(lambda r: len(r.live()) == 1)
        await back.close()


async def test_a_stream_ended_inside_its_initial_state_says_start_again_without_a_cursor(
    db_url: str, seeder: Seeder
) -> None:
    await seeder.open(slots(1, 400), at=NOW)  # more than a consumer's window holds
    async with serving(db_url, watch_max_age_seconds=1) as (server, _stub):
        address = f"127.0.0.1:{server.port}"
        async with grpc.aio.insecure_channel(address, options=SMALL_WINDOW) as channel:
            stalled = feed_pb2_grpc.FeedServiceStub(channel).WatchDrops(
                Request(send_initial_state=True)
            )
            await asyncio.sleep(2.0)  # blocked sending its initial state past its age
            assert sample(server, ENDED, reason="max_age") == 1
            assert sample(server, "dropwatch_feed_watch_streams") == 0
            got = []
            try:
                async for message in stalled:
                    got.append(message)
            except grpc.aio.AioRpcError as exc:
                error = exc
    assert error.code() is grpc.StatusCode.ABORTED
    assert "start again" in (error.details() or "") and "cursor=" not in (error.details() or "")
    assert "dropwatch-cursor" not in dict(error.trailing_metadata() or ())
    assert got and all(m.initial for m in got) and len(got) < 400
