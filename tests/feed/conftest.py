"""A real feed server on port 0, a real client channel, and a seeder over a real database."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from services.feed.server import FeedServer, start_feed
from services.feed.settings import FeedSettings
from shared.db.engine import make_async_engine
from shared.gen.dropwatch.feed.v1 import feed_pb2_grpc
from tests.seeding import Seeder

# Fixed "now": the server's clock is pinned so windows are exact.
NOW = dt.datetime(2026, 12, 1, 17, 0, tzinfo=dt.UTC)  # 12:00 in New York
TODAY = dt.date(2026, 12, 1)


def feed_settings(db_url: str, **extra: Any) -> FeedSettings:
    values: dict[str, Any] = {
        "database_url": SecretStr(db_url),
        "feed_port": 0,
        "metrics_port": 0,
        "page_token_secret": SecretStr("test-secret-" + "0" * 32),
    }
    values.update(extra)
    return FeedSettings(**values)


@pytest.fixture
async def seeder(db_url: str) -> AsyncIterator[Seeder]:
    engine = make_async_engine(feed_settings(db_url), name="seed", url=db_url)
    seeder = Seeder(engine, TODAY)
    await seeder.setup()
    try:
        yield seeder
    finally:
        await engine.dispose()


@pytest.fixture
async def feed(db_url: str, seeder: Seeder) -> AsyncIterator[FeedServer]:
    server = await start_feed(feed_settings(db_url), db_url)
    server.servicer.clock = lambda: NOW
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
async def stub(feed: FeedServer) -> AsyncIterator[feed_pb2_grpc.FeedServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{feed.port}") as channel:
        yield feed_pb2_grpc.FeedServiceStub(channel)
