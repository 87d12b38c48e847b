"""Every answer is right or a clear error: regressions found by adversarial use of the feed.

Each test is one finding (see docs/architecture.md, "The feed"): a statement timeout that came
back INTERNAL, HH:MM values with a newline or non-ASCII digits, undecodable request bytes, the
cache answering another request's `limit_capped`, and `as_of` left unset before any poll.
"""

from __future__ import annotations

import datetime as dt

import grpc
import psycopg
import pytest

from services.feed import limits
from services.feed.server import FeedServer, start_feed
from shared.db.urls import libpq_url
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.feed.conftest import NOW, TODAY, feed_settings
from tests.seeding import Seeder, SeedSlot

Stub = feed_pb2_grpc.FeedServiceStub
Filter = feed_pb2.FeedFilter
SERVICE = "/dropwatch.feed.v1.FeedService/"


async def _status(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


@pytest.mark.parametrize("table", ["open_slots", "venues", "discovery_buckets"])
async def test_a_server_side_statement_timeout_is_deadline_exceeded(
    db_url: str, seeder: Seeder, table: str
) -> None:
    """open_slots and venues are read on the raw-driver path, discovery_buckets (as_of)
    through SQLAlchemy: a statement timeout on either is DEADLINE_EXCEEDED, not INTERNAL."""
    server = await start_feed(feed_settings(db_url, db_statement_timeout_ms=200), db_url)
    server.servicer.clock = lambda: NOW
    blocker = await psycopg.AsyncConnection.connect(libpq_url(db_url))
    try:
        await blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            for call in (
                stub.StillOpen(feed_pb2.StillOpenRequest()),  # no client deadline at all
                stub.JustOpened(feed_pb2.JustOpenedRequest(), timeout=30),
            ):
                error = await _status(call)
                assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
    finally:
        await blocker.rollback()
        await blocker.close()
        await server.stop(0)


BAD_TIMES = [
    "19:00\n",
    "\n19:00",
    " 19:00",
    "19:00 ",
    "\uff11\uff19:\uff10\uff10"  # fullwidth digits,
    "19:0\u0660",
    "19:00:00",
    "9:00",
]


@pytest.mark.parametrize("value", BAD_TIMES)
@pytest.mark.parametrize("field", ["time_from", "time_to", "time_slots"])
async def test_hh_mm_is_two_ascii_digits_a_colon_two_ascii_digits(
    stub: Stub, field: str, value: str
) -> None:
    f = Filter(time_slots=[value]) if field == "time_slots" else Filter(**{field: value})
    for call in (
        stub.JustOpened(feed_pb2.JustOpenedRequest(filter=f)),
        stub.StillOpen(feed_pb2.StillOpenRequest(filter=f)),
    ):
        error = await _status(call)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (field, value)
        assert (error.details() or "").startswith(f"filter.{field}: ")


@pytest.mark.parametrize("value", ["2026-12-01\n", "\uff12026-12-01", "2026-12-0\u0661"])
async def test_dates_are_ascii_digits_only(stub: Stub, value: str) -> None:
    error = await _status(
        stub.JustOpened(feed_pb2.JustOpenedRequest(filter=Filter(reservation_dates=[value])))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("filter.reservation_dates: ")


@pytest.mark.parametrize(
    "raw",
    [
        bytes([0x0A, 0x03, 0x1A, 0x01, 0xFF]),  # filter.time_from holding invalid UTF-8
        bytes([0x0A, 0x05, 0x1A]),  # a length running past the end
        bytes([0xFF, 0xFF, 0xFF]),  # not a message at all
    ],
)
@pytest.mark.parametrize("method", ["JustOpened", "StillOpen"])
async def test_undecodable_request_bytes_are_invalid_argument(
    feed: FeedServer, method: str, raw: bytes
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{feed.port}") as channel:
        call = channel.unary_unary(SERVICE + method)  # bytes in, bytes out
        error = await _status(call(raw))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("request: ")


@pytest.mark.parametrize(
    ("rpc", "over", "maximum"),
    [
        ("JustOpened", 5000, limits.JUST_OPENED_MAX_LIMIT),
        ("StillOpen", 20000, limits.STILL_OPEN_MAX_LIMIT),
    ],
)
async def test_the_cache_never_answers_another_requests_limit_capped(
    seeder: Seeder, stub: Stub, rpc: str, over: int, maximum: int
) -> None:
    await seeder.open([SeedSlot(1, TODAY, "19:00")], at=NOW - dt.timedelta(seconds=30))
    make = feed_pb2.JustOpenedRequest if rpc == "JustOpened" else feed_pb2.StillOpenRequest
    call = getattr(stub, rpc)
    capped = await call(make(limit=over))
    assert (capped.applied_limit, capped.limit_capped) == (maximum, True)
    exact = await call(make(limit=maximum))  # within the TTL, same applied limit
    assert (exact.applied_limit, exact.limit_capped) == (maximum, False)
    again = await call(make(limit=over))
    assert (again.applied_limit, again.limit_capped) == (maximum, True)


async def test_as_of_is_always_set_and_says_when_there_is_no_data_yet(
    seeder: Seeder, stub: Stub, feed: FeedServer
) -> None:
    for reply in (
        await stub.JustOpened(feed_pb2.JustOpenedRequest()),
        await stub.StillOpen(feed_pb2.StillOpenRequest()),
    ):
        assert reply.HasField("as_of")
        assert reply.no_data_yet
        assert reply.as_of.ToDatetime(dt.UTC) == NOW  # the time of the answer
        assert not reply.items
    polled = NOW - dt.timedelta(seconds=20)
    await seeder.open([SeedSlot(1, TODAY, "19:00")], at=polled)
    feed.servicer.cache.invalidate()  # the poll's NOTIFY may not have landed yet
    for reply in (
        await stub.JustOpened(feed_pb2.JustOpenedRequest()),
        await stub.StillOpen(feed_pb2.StillOpenRequest(min_age_seconds=0)),
    ):
        assert not reply.no_data_yet
        assert reply.as_of.ToDatetime(dt.UTC) == polled
        assert len(reply.items) == 1
