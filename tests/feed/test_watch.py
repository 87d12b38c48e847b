"""WatchDrops, live: changes in commit order with cursors, heartbeats, resume, bad input, auth."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

import grpc
import pytest

from services.feed import auth
from services.feed.changes import filter_query
from services.feed.cursor import filter_key
from shared.gen.dropwatch.feed.v1 import feed_pb2
from tests.feed.conftest import NOW, TODAY
from tests.feed.watch_support import (
    Recorder,
    sample,
    serving,
    subscribed,
    venue_of,
)
from tests.seeding import Seeder, SeedSlot

Request = feed_pb2.WatchDropsRequest
Filter = feed_pb2.FeedFilter


def at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_opens_and_closes_arrive_live_in_commit_order_with_cursors(
    db_url: str, seeder: Seeder
) -> None:
    a, b = SeedSlot(1, TODAY, "19:00"), SeedSlot(2, TODAY, "15:00")
    async with serving(db_url) as (server, stub):
        stream = Recorder.start(stub, Request())
        await subscribed(server, 1)
        await seeder.open([a], at=at(1))
        await seeder.open([b], at=at(2))
        await seeder.close([a], at=at(3))
        await stream.until(lambda r: len(r.live()) >= 3)
        kinds = [(m.WhichOneof("message"), venue_of(m)) for m in stream.live()]
        assert kinds == [("opened", 1), ("opened", 2), ("closed", 1)]
        closed = stream.live("closed")[0].closed
        assert closed.drop.event_id == stream.live()[0].opened.event_id
        assert closed.open_seconds == pytest.approx(2.0)
        cursors = [m.cursor for m in stream.live()]
        assert all(cursors) and len(set(cursors)) == 3
        assert sample(server, "dropwatch_feed_watch_streams") == 1
        await stream.close()
        # The stream's end is seen by the server (the gauge falls back).
        await eventually(lambda: sample(server, "dropwatch_feed_watch_streams") == 0)
        assert sample(server, "dropwatch_feed_watch_messages_total", type="opened") == 2


async def test_heartbeats_move_the_cursor_while_nothing_matches(
    db_url: str, seeder: Seeder
) -> None:
    async with serving(db_url) as (server, stub):
        quiet = Request(filter=feed_pb2.FeedFilter(venue_ids=[999]), heartbeat_seconds=1)
        stream = Recorder.start(stub, quiet)
        await stream.until(lambda r: len(r.messages) >= 1, timeout=5)
        first = stream.messages[0]
        assert first.WhichOneof("message") == "progress" and first.cursor
        for second in range(3):
            await seeder.open([SeedSlot(1 + second, TODAY, "19:00")], at=at(second))
        started = time.monotonic()
        await stream.until(lambda r: len(r.messages) >= 3, timeout=5)
        assert time.monotonic() - started < 3.5  # about one a second
        assert not stream.live()
        key = filter_key(filter_query(quiet.filter))  # cursors of the stream's filter move on
        positions = [
            server.watch.codec.decode(m.cursor, key).position_xact for m in stream.messages
        ]
        assert positions == sorted(positions) and positions[-1] > positions[0]
        await stream.close()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (Request(heartbeat_seconds=301), "heartbeat_seconds"),
        (Request(heartbeat_seconds=-1), "heartbeat_seconds"),
        (Request(cursor="not-a-cursor"), "cursor"),
        (Request(cursor="A" * 9000), "cursor"),
        (Request(send_initial_state=True, cursor="x"), "send_initial_state"),
        (Request(filter=Filter(party_sizes=[21])), "filter.party_sizes"),
        (
            Request(filter=feed_pb2.FeedFilter(reservation_dates=["2026-13-01"])),
            "filter.reservation_dates",
        ),
        (
            Request(filter=feed_pb2.FeedFilter(time_from="20:00", time_to="19:00")),
            "filter.time_from",
        ),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field_before_any_message(
    db_url: str, request_: feed_pb2.WatchDropsRequest, field: str
) -> None:
    async with serving(db_url) as (server, stub):
        stream = Recorder.start(stub, request_)
        error = await stream.ended()
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith(f"{field}:")
        assert not stream.messages
        assert sample(server, "dropwatch_feed_watch_streams_ended_total", reason="refused") == 1


async def test_a_cursor_of_another_filter_is_refused(db_url: str) -> None:
    async with serving(db_url) as (_server, stub):
        stream = Recorder.start(stub, Request(heartbeat_seconds=1))
        await stream.until(lambda r: len(r.messages) >= 1)
        await stream.close()
        other = Request(filter=feed_pb2.FeedFilter(venue_ids=[1]), cursor=stream.last_cursor())
        error = await Recorder.start(stub, other).ended()
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "cursor: belongs to a different filter" in (error.details() or "")


async def test_the_caller_check_applies_to_streams(db_url: str) -> None:
    key = b"k" * 32
    async with serving(db_url, feed_auth_secret=key.decode()) as (server, stub):
        error = await Recorder.start(stub, Request(heartbeat_seconds=1)).ended()
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        token = auth.issue(key, "alerts", int(time.time()) + 60)
        stream = Recorder.start(
            stub, Request(heartbeat_seconds=1), metadata=(("authorization", f"Bearer {token}"),)
        )
        await stream.until(lambda r: len(r.messages) >= 1)
        await stream.close()
        labels = {
            "grpc_type": "server_stream",
            "grpc_service": "dropwatch.feed.v1.FeedService",
            "grpc_method": "WatchDrops",
        }
        assert sample(server, "grpc_server_started_total", **labels) == 2
        await eventually(
            lambda: (
                sample(server, "grpc_server_handled_total", **labels, grpc_code="CANCELLED") == 1
            )
        )
        assert (
            sample(server, "grpc_server_handled_total", **labels, grpc_code="UNAUTHENTICATED") == 1
        )


async def test_idle_streams_hold_no_database_connection(db_url: str, seeder: Seeder) -> None:
    async with serving(db_url, watch_check_seconds=0.1) as (server, stub):
        streams = [Recorder.start(stub, Request(heartbeat_seconds=1)) for _ in range(20)]
        await subscribed(server, 20)
        await seeder.open([SeedSlot(1, TODAY, "19:00")], at=NOW)
        for stream in streams:
            await stream.until(lambda r: len(r.live()) == 1)
        in_use = []
        for _ in range(20):  # while they heartbeat and the hub reads every 0.1 s
            in_use.append(sample(server, "dropwatch_db_pool_connections_in_use", pool="feed"))
            await asyncio.sleep(0.075)
        for stream in streams:
            await stream.close()
    assert max(in_use) <= 1  # the hub's own read, at most; none per stream
