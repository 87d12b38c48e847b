"""FeedService over real gRPC, reading what the poller's own code wrote."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from prometheus_client import generate_latest

from services.feed import limits
from services.feed.server import FeedServer
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.feed.conftest import NOW, TODAY
from tests.seeding import Seeder, SeedSlot
from tests.waiting import wait_until_async

D0, D1 = TODAY, TODAY + dt.timedelta(days=1)
Stub = feed_pb2_grpc.FeedServiceStub


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


def ids(
    response: feed_pb2.JustOpenedResponse | feed_pb2.StillOpenResponse,
) -> list[tuple[int, str, str]]:
    return [(i.venue.id, i.reservation_date, i.slot_time) for i in response.items]


async def test_just_opened_is_the_recent_window_newest_first(seeder: Seeder, stub: Stub) -> None:
    await seeder.open([SeedSlot(1, D0, "19:00")], at=ago(3000))
    await seeder.open([SeedSlot(2, D0, "19:30")], at=ago(300))
    await seeder.open([SeedSlot(3, D1, "15:00")], at=ago(60))
    reply = await stub.JustOpened(feed_pb2.JustOpenedRequest())
    assert ids(reply) == [(3, D1.isoformat(), "15:00"), (2, D0.isoformat(), "19:30")]
    item = reply.items[0]
    assert item.venue.name == "Venue 3"
    assert item.booking_url == f"https://resy.com/cities/ny/venue-3?date={D1.isoformat()}&seats=2"
    assert item.bucket_id == f"{D1.isoformat()}_15:00"
    assert item.time_bucket == feed_pb2.TIME_BUCKET_OFF_PEAK
    assert list(item.party_sizes) == [2, 4]
    assert item.opened_at.ToDatetime(dt.UTC) == ago(60)
    assert reply.applied_limit == limits.JUST_OPENED_DEFAULT_LIMIT
    assert not reply.truncated and not reply.limit_capped and not reply.next_page_token
    assert reply.as_of.ToDatetime(dt.UTC) == ago(60)


async def test_still_open_starts_where_just_opened_ends_and_drops_closed_slots(
    seeder: Seeder, stub: Stub, feed: FeedServer
) -> None:
    old, older, recent = (
        SeedSlot(1, D0, "19:00"),
        SeedSlot(2, D1, "19:00"),
        SeedSlot(3, D0, "15:00"),
    )
    await seeder.open([older], at=ago(7200))
    await seeder.open([old], at=ago(3600))
    await seeder.open([recent], at=ago(30))
    reply = await stub.StillOpen(feed_pb2.StillOpenRequest())
    assert [i.venue.id for i in reply.items] == [1, 2]
    await seeder.close([old], at=ago(10))
    feed.servicer.cache.invalidate()  # the close's NOTIFY may not have landed yet
    reply = await stub.StillOpen(feed_pb2.StillOpenRequest())
    assert [i.venue.id for i in reply.items] == [2]
    everything = await stub.StillOpen(feed_pb2.StillOpenRequest(min_age_seconds=0))
    assert [i.venue.id for i in everything.items] == [3, 2]


async def test_filters_apply_before_venue_dedupe(seeder: Seeder, stub: Stub) -> None:
    # Venue 7 on D0: the newest drop is for 4 people, an older one for 2.
    await seeder.open([SeedSlot(7, D0, "18:00", party_sizes=(2,))], at=ago(200))
    await seeder.open([SeedSlot(7, D0, "20:00", party_sizes=(4,))], at=ago(100))
    default = await stub.JustOpened(feed_pb2.JustOpenedRequest())
    assert ids(default) == [(7, D0.isoformat(), "20:00")]  # newest wins per (venue, date)
    for_two = await stub.JustOpened(
        feed_pb2.JustOpenedRequest(filter=feed_pb2.FeedFilter(party_sizes=[2]))
    )
    # The original de-duplicated first and lost venue 7 here (docs/architecture.md, What the
    # original system did wrong, 10).
    assert ids(for_two) == [(7, D0.isoformat(), "18:00")]
    every = await stub.JustOpened(
        feed_pb2.JustOpenedRequest(filter=feed_pb2.FeedFilter(all_slots_per_venue=True))
    )
    assert len(every.items) == 2


async def test_each_filter(seeder: Seeder, stub: Stub) -> None:
    await seeder.open(
        [
            SeedSlot(1, D0, "14:00", party_sizes=(2,)),
            SeedSlot(2, D0, "19:30", party_sizes=(4,)),
            SeedSlot(3, D1, "20:00", party_sizes=(6,)),
        ],
        at=ago(100),
    )

    async def venues(**kwargs: object) -> set[int]:
        reply = await stub.JustOpened(
            feed_pb2.JustOpenedRequest(filter=feed_pb2.FeedFilter(**kwargs))  # type: ignore[arg-type]
        )
        return {i.venue.id for i in reply.items}

    assert await venues(reservation_dates=[D1.isoformat()]) == {3}
    assert await venues(party_sizes=[4, 6]) == {2, 3}
    assert await venues(time_from="19:00", time_to="19:59") == {2}
    assert await venues(time_from="19:30") == {2, 3}
    assert await venues(time_to="14:00") == {1}
    assert await venues(time_slots=["15:00"]) == {1}
    assert await venues(venue_ids=[1, 3]) == {1, 3}
    assert await venues(venue_ids=[1], party_sizes=[4]) == set()


async def test_limit_is_capped_and_reported(seeder: Seeder, stub: Stub) -> None:
    await seeder.open([SeedSlot(v, D0, "19:00") for v in range(1, 6)], at=ago(100))
    reply = await stub.JustOpened(feed_pb2.JustOpenedRequest(limit=3))
    assert len(reply.items) == 3 and reply.truncated and reply.next_page_token
    assert reply.applied_limit == 3 and not reply.limit_capped
    big = await stub.StillOpen(feed_pb2.StillOpenRequest(limit=50_000, min_age_seconds=0))
    assert big.applied_limit == limits.STILL_OPEN_MAX_LIMIT and big.limit_capped
    assert len(big.items) == 5 and not big.truncated


async def test_paging_returns_every_item_once_while_new_drops_arrive(
    seeder: Seeder, stub: Stub
) -> None:
    await seeder.open([SeedSlot(v, D0, "19:00") for v in range(1, 11)], at=ago(500))
    await seeder.open([SeedSlot(v, D1, "19:00") for v in range(1, 11)], at=ago(400))
    seen: list[int] = []
    request = feed_pb2.JustOpenedRequest(limit=3)
    first = True
    while True:
        reply = await stub.JustOpened(request)
        seen += [i.event_id for i in reply.items]
        if first:  # drops arriving mid-walk (after the first call), for venues on later pages
            await seeder.open([SeedSlot(v, D0, "20:00") for v in range(1, 11)], at=ago(-5))
            first = False
        if not reply.next_page_token:
            break
        request = feed_pb2.JustOpenedRequest(limit=3, page_token=reply.next_page_token)
    assert len(seen) == 20 and len(set(seen)) == 20


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            feed_pb2.JustOpenedRequest(
                filter=feed_pb2.FeedFilter(reservation_dates=["2026-13-01"])
            ),
            "filter.reservation_dates",
        ),
        (
            feed_pb2.JustOpenedRequest(
                filter=feed_pb2.FeedFilter(reservation_dates=["12/01/2026"])
            ),
            "filter.reservation_dates",
        ),
        (
            feed_pb2.JustOpenedRequest(filter=feed_pb2.FeedFilter(party_sizes=[0])),
            "filter.party_sizes",
        ),
        (
            feed_pb2.JustOpenedRequest(filter=feed_pb2.FeedFilter(party_sizes=[21])),
            "filter.party_sizes",
        ),
        (
            feed_pb2.JustOpenedRequest(
                filter=feed_pb2.FeedFilter(time_from="20:00", time_to="19:00")
            ),
            "filter.time_from",
        ),
        (feed_pb2.JustOpenedRequest(filter=feed_pb2.FeedFilter(time_to="25:00")), "filter.time_to"),
        (
            feed_pb2.JustOpenedRequest(filter=feed_pb2.FeedFilter(time_slots=["7pm"])),
            "filter.time_slots",
        ),
        (
            feed_pb2.JustOpenedRequest(filter=feed_pb2.FeedFilter(venue_ids=list(range(1, 102)))),
            "filter.venue_ids",
        ),
        (feed_pb2.JustOpenedRequest(limit=-1), "limit"),
        (feed_pb2.JustOpenedRequest(max_age_seconds=3601), "max_age_seconds"),
        (feed_pb2.JustOpenedRequest(page_token="not-a-token"), "page_token"),
        (feed_pb2.StillOpenRequest(min_age_seconds=-5), "min_age_seconds"),
        (feed_pb2.StillOpenRequest(limit=-10), "limit"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    stub: Stub, request_: feed_pb2.JustOpenedRequest | feed_pb2.StillOpenRequest, field: str
) -> None:
    call = stub.JustOpened if isinstance(request_, feed_pb2.JustOpenedRequest) else stub.StillOpen
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(request_)  # type: ignore[operator]
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(f"{field}: ")


async def test_token_from_another_query_or_tampered_is_rejected(seeder: Seeder, stub: Stub) -> None:
    await seeder.open([SeedSlot(v, D0, "19:00") for v in range(1, 5)], at=ago(100))
    token = (await stub.JustOpened(feed_pb2.JustOpenedRequest(limit=2))).next_page_token
    assert token
    other = feed_pb2.JustOpenedRequest(
        limit=2, page_token=token, filter=feed_pb2.FeedFilter(party_sizes=[2])
    )
    tampered = feed_pb2.JustOpenedRequest(
        limit=2, page_token=token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    )
    for request in (other, tampered):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.JustOpened(request)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (info.value.details() or "")


# Below the cache's 2 s TTL, so only the commit's NOTIFY can have cleared the cached answer.
NOTIFY = 1.5


def _sample(feed: FeedServer, name: str) -> float:
    for line in generate_latest(feed.registry).decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if name + "{" in line and not line.startswith(name + "{"):
                continue
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_default_answer_is_cached_and_invalidated_by_a_commit(
    seeder: Seeder, stub: Stub, feed: FeedServer
) -> None:
    await seeder.open([SeedSlot(1, D0, "19:00")], at=ago(100))
    first = await stub.JustOpened(feed_pb2.JustOpenedRequest())
    second = await stub.JustOpened(feed_pb2.JustOpenedRequest())
    assert ids(first) == ids(second)
    hits = 'dropwatch_feed_cache_requests_total{result="hit",rpc="JustOpened"}'
    assert _sample(feed, hits) >= 1
    await seeder.open([SeedSlot(2, D0, "19:30")], at=ago(50))

    async def both() -> feed_pb2.JustOpenedResponse | None:  # NOTIFY lands asynchronously
        reply = await stub.JustOpened(feed_pb2.JustOpenedRequest())
        return reply if len(reply.items) == 2 else None

    reply = await wait_until_async(both, "the commit's NOTIFY to clear the cache", timeout=NOTIFY)
    assert [i.venue.id for i in reply.items] == [2, 1]
    assert _sample(feed, "dropwatch_feed_cache_invalidations_total") >= 1


async def test_grpc_metrics_use_the_standard_names(stub: Stub, feed: FeedServer) -> None:
    await stub.StillOpen(feed_pb2.StillOpenRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.StillOpen(feed_pb2.StillOpenRequest(limit=-1))
    body = generate_latest(feed.registry).decode()
    labels = 'grpc_method="StillOpen",grpc_service="dropwatch.feed.v1.FeedService"'
    unary = 'grpc_type="unary"'
    assert f"grpc_server_started_total{{{labels},{unary}}} 2.0" in body
    assert f'grpc_server_handled_total{{grpc_code="OK",{labels},{unary}}} 1.0' in body
    assert f'grpc_server_handled_total{{grpc_code="INVALID_ARGUMENT",{labels},{unary}}} 1.0' in body
    assert "grpc_server_handling_seconds_bucket" in body
    assert 'dropwatch_db_pool_size{pool="feed"}' in body


async def test_filtered_answers_are_cached_per_request_and_invalidated(
    seeder: Seeder, stub: Stub, feed: FeedServer
) -> None:
    await seeder.open([SeedSlot(1, D0, "19:00")], at=ago(1000))
    request = feed_pb2.StillOpenRequest(filter=feed_pb2.FeedFilter(party_sizes=[2]))
    assert [i.venue.id for i in (await stub.StillOpen(request)).items] == [1]
    assert [i.venue.id for i in (await stub.StillOpen(request)).items] == [1]
    hits = 'dropwatch_feed_cache_requests_total{result="hit",rpc="StillOpen"}'
    assert _sample(feed, hits) == 1
    await seeder.open([SeedSlot(2, D0, "19:30")], at=ago(900))

    async def both() -> feed_pb2.StillOpenResponse | None:
        reply = await stub.StillOpen(request)
        return reply if len(reply.items) == 2 else None

    reply = await wait_until_async(both, "the commit's NOTIFY to clear the cache", timeout=NOTIFY)
    assert [i.venue.id for i in reply.items] == [2, 1]
