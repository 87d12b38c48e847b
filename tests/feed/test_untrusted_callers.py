"""Hostile callers on loopback: oversized and padded page tokens, forged, expired and rotated
ones, callers without a token, and what an error tells them."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.feed import auth
from services.feed.errors import InvalidArgumentError
from services.feed.paging import Boundary, Cursor, PageTokens
from services.feed.server import FeedServer, start_feed
from services.feed.settings import FeedSettings
from shared.db.urls import libpq_url
from shared.errors import ConfigError
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from shared.settings import load_settings
from tests.feed.conftest import NOW, TODAY, feed_settings
from tests.seeding import Seeder, SeedSlot

Stub = feed_pb2_grpc.FeedServiceStub
KEY, OLD_KEY = b"k" * 32, b"o" * 32
CURSOR = Cursor(Boundary(NOW, 7), NOW, 3)


async def _three_drops(seeder: Seeder) -> None:
    for venue in (1, 2, 3):
        slot = SeedSlot(venue, TODAY, "19:00")
        await seeder.open([slot], at=NOW - dt.timedelta(seconds=60 - venue))


async def test_padded_and_foreign_tokens_are_refused_and_never_cached(
    seeder: Seeder, stub: Stub, feed: FeedServer
) -> None:
    await _three_drops(seeder)
    first = await stub.JustOpened(feed_pb2.JustOpenedRequest(limit=2))
    token = first.next_page_token
    assert token
    with pytest.raises(grpc.aio.AioRpcError) as huge:  # 3.5 MB: refused before decoding
        await stub.JustOpened(
            feed_pb2.JustOpenedRequest(limit=2, page_token=token + "!" * 3_500_000)
        )
    assert huge.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    entries = len(feed.servicer.cache._answers)
    for padded in (token + "!", token + "A" * 600, token + "\x00", "=" + token):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.JustOpened(feed_pb2.JustOpenedRequest(limit=2, page_token=padded))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, padded[-5:]
    assert len(feed.servicer.cache._answers) == entries
    for _ in range(3):  # one page, asked again: one entry
        rest = await stub.JustOpened(feed_pb2.JustOpenedRequest(limit=2, page_token=token))
        assert [i.venue.id for i in rest.items] == [1]
    assert len(feed.servicer.cache._answers) == entries + 1


def test_tokens_expire_and_a_previous_key_keeps_its_tokens_until_removed() -> None:
    clock = [1_000_000.0]
    old = PageTokens(OLD_KEY, clock=lambda: clock[0])
    token = old.issue("fp", CURSOR)
    rotated = PageTokens(KEY, previous=OLD_KEY, lifetime=600, clock=lambda: clock[0])
    assert rotated.read(token, "fp") == CURSOR
    assert rotated.read(rotated.issue("fp", CURSOR), "fp") == CURSOR
    with pytest.raises(InvalidArgumentError, match="issued"):
        PageTokens(KEY, clock=lambda: clock[0]).read(token, "fp")  # the old key removed
    clock[0] += 601
    with pytest.raises(InvalidArgumentError, match="expired"):
        rotated.read(token, "fp")


@pytest.mark.parametrize("name", ["page_token_secret", "page_token_previous_secret"])
def test_a_short_page_token_secret_is_refused(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(FeedSettings, **{name: "x" * 31})
    assert info.value.variable == f"DROPWATCH_{name.upper()}"


async def test_unavailable_says_database_unavailable_only() -> None:
    url = "postgresql://feed@127.0.0.1:1/nowhere"
    server = await start_feed(feed_settings(url), url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await Stub(channel).JustOpened(feed_pb2.JustOpenedRequest(), timeout=10)
    finally:
        await server.stop(0)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "database unavailable"


async def test_booking_links_percent_encode_provider_text(
    seeder: Seeder, stub: Stub, db_url: str
) -> None:
    await seeder.open([SeedSlot(4, TODAY, "19:00")], at=NOW - dt.timedelta(seconds=5))
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        conn.execute(
            "UPDATE venues SET url_slug = %s, location_code = %s WHERE venue_id = 4",
            ("x?date=2000-01-01&seats=99#", "..\\..\\evil.example"),
        )
    (item,) = (await stub.JustOpened(feed_pb2.JustOpenedRequest())).items
    assert item.booking_url.startswith("https://resy.com/cities/..%5C..%5Cevil.example/x%3Fdate")
    assert item.booking_url.count("?") == 1 and "#" not in item.booking_url
    assert item.booking_url.endswith(f"?date={TODAY.isoformat()}&seats=2")


@pytest.fixture
async def guarded(db_url: str, seeder: Seeder) -> AsyncIterator[FeedServer]:
    settings = feed_settings(
        db_url, feed_auth_secret=KEY.decode(), feed_auth_previous_secret=OLD_KEY.decode()
    )
    server = await start_feed(settings, db_url)
    server.servicer.clock = lambda: NOW
    try:
        yield server
    finally:
        await server.stop(0)


async def test_a_caller_without_a_valid_token_is_refused(guarded: FeedServer) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    good = auth.issue(KEY, "alerts", now + 3600)
    rotated = auth.issue(OLD_KEY, "alerts", now + 3600)
    forged = auth.issue(b"f" * 32, "alerts", now + 3600)
    expired = auth.issue(KEY, "alerts", now - 1)
    renamed = good.replace(".alerts.", ".admin.")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        stub = Stub(channel)
        for token in (None, "", forged, expired, renamed, good + "x"):
            metadata = None if token is None else (("authorization", f"Bearer {token}"),)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.StillOpen(feed_pb2.StillOpenRequest(), metadata=metadata)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        for token in (good, rotated):
            reply = await stub.StillOpen(
                feed_pb2.StillOpenRequest(), metadata=(("authorization", f"Bearer {token}"),)
            )
            assert reply.applied_limit > 0
        # Probes need no token.
        probe = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert probe.status == health_pb2.HealthCheckResponse.SERVING


def test_a_token_respelled_with_other_digits_or_leading_zeros_is_malformed() -> None:
    """Python's int() reads Arabic-Indic digits and leading zeros: the same signed expiry must
    have one spelling."""
    expires = int(time.time()) + 3600
    good = auth.issue(KEY, "alerts", expires)
    arabic = str(expires).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    respelled = good.replace(f".{expires}.", f".{arabic}.")
    assert auth.verify([KEY], good, time.time()) == "alerts"
    padded = good.replace(f".{expires}.", f".00{expires}.")
    for token in (respelled, padded, good.replace(f".{expires}.", f".{expires}\n."), "dwf1.a.²³.x"):
        with pytest.raises(ValueError, match="malformed"):
            auth.verify([KEY], token, time.time())


async def test_reflection_can_be_switched_off(db_url: str) -> None:
    server = await start_feed(feed_settings(db_url, feed_reflection=False), db_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.ServerReflectionInfo(iter([ask])):
                    pass
    finally:
        await server.stop(0)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
