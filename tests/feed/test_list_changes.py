"""ListChanges over gRPC, end to end: a real feed server on a real database."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from sqlalchemy import text

from services.feed import auth
from services.feed.server import FeedServer, start_feed
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.feed.conftest import NOW, TODAY, feed_settings
from tests.seeding import Seeder, SeedSlot

Stub = feed_pb2_grpc.FeedServiceStub
LATER = NOW + dt.timedelta(minutes=3)


async def listing(stub: Stub, **kw: object) -> feed_pb2.ListChangesResponse:
    return await stub.ListChanges(feed_pb2.ListChangesRequest(**kw))  # type: ignore[arg-type]


async def refused(stub: Stub, code: grpc.StatusCode, **kw: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await listing(stub, **kw)
    assert err.value.code() == code, err.value.details()
    return err.value.details() or ""


async def test_empty_cursor_is_now_then_changes_follow(stub: Stub, seeder: Seeder) -> None:
    await seeder.open([SeedSlot(1, TODAY, "19:00")], NOW)  # before: not listed
    first = await listing(stub)
    assert list(first.changes) == [] and first.next_cursor and not first.truncated
    assert first.applied_limit == 500 and not first.limit_capped
    assert first.as_of.ToDatetime(dt.UTC) == NOW

    slot = SeedSlot(2, TODAY, "19:00", (2, 4))
    await seeder.open([slot], NOW)
    await seeder.close([slot], LATER)
    page = await listing(stub, cursor=first.next_cursor)
    kinds = [c.WhichOneof("change") for c in page.changes]
    assert kinds == ["opened", "closed"]
    opened, closed = page.changes[0].opened, page.changes[1].closed
    assert opened.slot_id == slot.slot_id and opened.venue.name == "Venue 2"
    assert list(opened.party_sizes) == [2, 4] and opened.booking_url.endswith("seats=2")
    assert closed.drop.event_id == opened.event_id and closed.change_id > opened.event_id
    assert closed.open_seconds == 180.0 and closed.closed_at.ToDatetime(dt.UTC) == LATER
    assert all(c.cursor for c in page.changes)

    # Resuming from the first change's cursor gives the rest; from next_cursor, nothing.
    rest = await listing(stub, cursor=page.changes[0].cursor)
    assert [c.closed.change_id for c in rest.changes] == [closed.change_id]
    assert list((await listing(stub, cursor=page.next_cursor)).changes) == []


async def test_filter_limit_and_truncation(stub: Stub, seeder: Seeder) -> None:
    start = (await listing(stub, filter=feed_pb2.FeedFilter(party_sizes=[6]))).next_cursor
    slots = [SeedSlot(10 + n, TODAY, "19:00", (6,) if n % 2 else (2,)) for n in range(7)]
    await seeder.open(slots, NOW)
    six = feed_pb2.FeedFilter(party_sizes=[6])
    page = await listing(stub, cursor=start, filter=six, limit=2)
    assert page.truncated and page.applied_limit == 2 and len(page.changes) == 2
    rest = await listing(stub, cursor=page.next_cursor, filter=six, limit=2)
    assert not rest.truncated and len(rest.changes) == 1
    venues = [c.opened.venue.id for c in [*page.changes, *rest.changes]]
    assert sorted(venues) == [11, 13, 15]

    capped = await listing(stub, limit=5000)
    assert capped.applied_limit == 2000 and capped.limit_capped


async def test_bad_input_names_the_field(stub: Stub) -> None:
    cursor = (await listing(stub)).next_cursor
    assert "limit" in await refused(stub, grpc.StatusCode.INVALID_ARGUMENT, limit=-1)
    details = await refused(stub, grpc.StatusCode.INVALID_ARGUMENT, cursor=cursor[:-2])
    assert details.startswith("cursor:")
    other = feed_pb2.FeedFilter(venue_ids=[3])
    details = await refused(stub, grpc.StatusCode.INVALID_ARGUMENT, cursor=cursor, filter=other)
    assert details.startswith("cursor:") and "different filter" in details
    details = await refused(stub, grpc.StatusCode.INVALID_ARGUMENT, cursor="x" * 10_000)
    assert details.startswith("cursor:")
    bad = feed_pb2.FeedFilter(party_sizes=[99])
    details = await refused(stub, grpc.StatusCode.INVALID_ARGUMENT, filter=bad)
    assert details.startswith("filter.party_sizes")
    page_token = await refused(stub, grpc.StatusCode.INVALID_ARGUMENT, cursor="AAAA" + cursor[4:])
    assert page_token.startswith("cursor:")


async def test_a_pruned_cursor_is_out_of_range(stub: Stub, feed: FeedServer) -> None:
    cursor = (await listing(stub)).next_cursor
    async with feed.servicer.engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION READ WRITE"))
        await conn.execute(
            text(
                "INSERT INTO change_floor (pruned_through, pruned_day, pruned_at)"
                " VALUES (pg_current_xact_id(), '2026-11-30', now())"
            )
        )
        await conn.commit()
    details = await refused(stub, grpc.StatusCode.OUT_OF_RANGE, cursor=cursor)
    assert "oldest resumable point" in details and "2026-11-30" in details
    assert (await listing(stub)).next_cursor  # a fresh start works


async def test_undecodable_request_is_invalid_argument(feed: FeedServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{feed.port}") as channel:
        call = channel.unary_unary(
            "/dropwatch.feed.v1.FeedService/ListChanges",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"\x12\x02\xff\xfe")  # cursor: invalid UTF-8
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_behind_auth_metrics_and_the_concurrency_limit(db_url: str, seeder: Seeder) -> None:
    """The same interceptors as JustOpened: no token, no answer; every call is counted; at
    the concurrency bound, RESOURCE_EXHAUSTED."""
    key = b"k" * 32
    server = await start_feed(feed_settings(db_url, feed_auth_secret=key.decode()), db_url)
    try:
        good = auth.issue(key, "bot", int(dt.datetime.now(dt.UTC).timestamp()) + 600)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = Stub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await listing(stub)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            reply = await stub.ListChanges(
                feed_pb2.ListChangesRequest(), metadata=(("authorization", f"Bearer {good}"),)
            )
            assert reply.next_cursor
        counted = {
            dict(s.labels).get("grpc_code")
            for m in server.registry.collect()
            for s in m.samples
            if dict(s.labels).get("grpc_method") == "ListChanges"
        }
        assert {"OK", "UNAUTHENTICATED"} <= counted
    finally:
        await server.stop(0)
    limited = await start_feed(feed_settings(db_url, max_concurrent_rpcs=1), db_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{limited.port}") as channel:
            stub = Stub(channel)
            async with limited.servicer.engine.connect() as conn:
                # Hold the read: one call waits on the lock, the second is over the bound.
                await conn.execute(text("LOCK TABLE change_floor IN ACCESS EXCLUSIVE MODE"))
                first = asyncio.ensure_future(listing(stub, cursor=(await _cursor(limited))))
                await asyncio.sleep(0.5)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await listing(stub)
                assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                await conn.rollback()
            assert (await first).next_cursor
    finally:
        await limited.stop(0)


async def _cursor(server: FeedServer) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return (await listing(Stub(channel))).next_cursor


async def test_database_down_is_unavailable_and_a_slow_read_is_deadline_exceeded(
    db_url: str, seeder: Seeder
) -> None:
    url = "postgresql://feed@127.0.0.1:1/nowhere"
    down = await start_feed(feed_settings(url), url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{down.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await Stub(channel).ListChanges(feed_pb2.ListChangesRequest(), timeout=10)
    finally:
        await down.stop(0)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "database unavailable"

    server = await start_feed(feed_settings(db_url), db_url)
    try:
        cursor = await _cursor(server)
        async with server.servicer.engine.connect() as conn:
            # A read held behind a lock ends at the client's deadline, as a cancelled query.
            await conn.execute(text("LOCK TABLE change_floor IN ACCESS EXCLUSIVE MODE"))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await Stub(channel).ListChanges(
                        feed_pb2.ListChangesRequest(cursor=cursor), timeout=1.0
                    )
            await conn.rollback()
    finally:
        await server.stop(0)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
