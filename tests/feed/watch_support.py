"""A real feed server with WatchDrops settings for tests, and a client that records a stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.feed.server import FeedServer, start_feed
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.feed.conftest import NOW, feed_settings

Stub = feed_pb2_grpc.FeedServiceStub
CURSOR_KEY = "dropwatch-cursor"


@asynccontextmanager
async def serving(db_url: str, **settings: Any) -> AsyncIterator[tuple[FeedServer, Stub]]:
    """A feed server (checks every 0.2 s unless told) and a stub on one channel."""
    settings.setdefault("watch_check_seconds", 0.2)
    server = await start_feed(feed_settings(db_url, **settings), db_url)
    server.servicer.clock = lambda: NOW
    server.watch.clock = lambda: NOW
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield server, feed_pb2_grpc.FeedServiceStub(channel)
    finally:
        await server.stop(0)


@dataclass
class Recorder:
    """Reads one stream in the background: its messages, then how it ended."""

    call: Any
    messages: list[feed_pb2.WatchDropsResponse] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def start(cls, stub: Stub, request: feed_pb2.WatchDropsRequest, **kw: Any) -> Recorder:
        recorder = cls(stub.WatchDrops(request, **kw))
        recorder.task = asyncio.create_task(recorder._read())
        return recorder

    async def _read(self) -> None:
        try:
            async for message in self.call:
                self.messages.append(message)
                self.changed.set()
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.changed.set()

    async def until(self, predicate: Any, timeout: float = 10.0) -> None:
        """Wait until `predicate(self)` holds (or the stream ended)."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                if self.task is not None and self.task.done():
                    raise AssertionError(f"stream ended: {self.error}")
                self.changed.clear()
                await self.changed.wait()

    async def ended(self, timeout: float = 10.0) -> grpc.aio.AioRpcError:
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout)
        assert self.error is not None, "the stream ended OK"
        return self.error

    async def close(self) -> None:
        self.call.cancel()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def live(self, kind: str | None = None) -> list[feed_pb2.WatchDropsResponse]:
        """Messages that report a change (not progress or initial ones), of `kind` if given."""
        kinds = (kind,) if kind else ("opened", "closed", "sizes_changed")
        return [m for m in self.messages if m.WhichOneof("message") in kinds and not m.initial]

    def last_cursor(self) -> str:
        return next(m.cursor for m in reversed(self.messages) if m.cursor)


def venue_of(message: feed_pb2.WatchDropsResponse) -> int:
    kind = message.WhichOneof("message")
    if kind == "opened":
        return message.opened.venue.id
    if kind == "closed":
        return message.closed.drop.venue.id
    return message.sizes_changed.drop.venue.id


def change_id(message: feed_pb2.WatchDropsResponse) -> int:
    kind = message.WhichOneof("message")
    if kind == "opened":
        return message.opened.event_id
    if kind == "closed":
        return message.closed.change_id
    return message.sizes_changed.change_id


def end_cursor(error: grpc.aio.AioRpcError) -> str:
    """The resume cursor of a stream end, checked to be in both places the contract names."""
    metadata = dict(error.trailing_metadata() or ())
    cursor = str(metadata[CURSOR_KEY])
    assert f"cursor={cursor}" in (error.details() or "")
    return cursor


def sample(server: FeedServer, name: str, **labels: str) -> float:
    return server.registry.get_sample_value(name, labels) or 0.0


async def subscribed(server: FeedServer, count: int, timeout: float = 10.0) -> None:
    """Wait until `count` streams hold their place at the hub. A stream without a cursor starts
    at the moment it subscribes, so a test that commits before that would race its own stream
    (seen under CI load: a commit right after `Recorder.start` reached no stream)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while sample(server, "dropwatch_feed_watch_streams") < count:
        assert asyncio.get_running_loop().time() < deadline, f"{count} streams never subscribed"
        await asyncio.sleep(0.01)


class GatedEngine:
    """An engine whose poll writes (every second transaction of a Seeder poll: lease, write)
    wait for `gate` before committing: a writer that commits late, out of id order."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.gate = asyncio.Event()
        self.written = asyncio.Event()
        self._calls = 0

    def hold(self) -> None:
        """Hold the next write until `gate` is set."""
        self.gate, self.written = asyncio.Event(), asyncio.Event()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Any]:
        self._calls += 1
        held = self._calls % 2 == 0
        async with self.engine.begin() as conn:
            yield conn
            if held:
                self.written.set()
                await self.gate.wait()
