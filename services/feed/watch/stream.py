"""The WatchDrops RPC: validate, subscribe at the hub, catch up if needed, then stream live.

A stream that starts now subscribes at the hub's position and only forwards what the hub
offers. A stream that resumes from an older cursor (or sends its initial state first)
subscribes first, so the hub buffers for it, then reads what it missed from the database
itself, page by page (a pooled connection per page, none while it waits), until a read ends at
the horizon; buffered changes at or before the position it reached are then dropped, the rest
sent: no gap (it subscribed before its last read) and no duplicate (positions are compared in
commit order). Every message's cursor, every `progress`, and the trailing status of every end
carry where to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncEngine

from services.feed import store
from services.feed.changes import OutOfRangeError, feed_item
from services.feed.cursor import Cursor, CursorCodec
from services.feed.metrics import WatchMetrics
from services.feed.request import Undecodable
from services.feed.servicer import abort_call, database_errors
from services.feed.settings import FeedSettings
from services.feed.watch.hub import PAGE, Hub, RefusedError, pending
from services.feed.watch.request import Watch, from_watch
from services.feed.watch.subscription import (
    DATABASE,
    MAX_AGE,
    Ending,
    Subscription,
    excluded,
    position,
)
from shared.db.buckets import market_today
from shared.errors import DropwatchError
from shared.gen.dropwatch.feed.v1 import feed_pb2

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
CURSOR_KEY = "dropwatch-cursor"
INTERNAL = Ending(grpc.StatusCode.INTERNAL, "error", "internal error")
INCOMPLETE = "the initial state was not complete: start again"
CURSOR_MEMO = 4_096  # signed cursor fields kept for reuse (cleared when full)
# A stream's age bound is shortened by up to this share, so streams opened together (after a
# deploy) do not all end, and reconnect, at the same moment.
AGE_JITTER = 0.1


class WatchService:
    """Implements FeedService.WatchDrops (registered by `server._method_handlers`)."""

    def __init__(
        self,
        settings: FeedSettings,
        engine: AsyncEngine,
        hub: Hub,
        codec: CursorCodec,
        metrics: WatchMetrics,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.hub = hub
        self.codec = codec
        self.metrics = metrics
        self.clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)  # "today"
        self._fields: dict[Cursor, bytes] = {}

    def cursor_field(self, cursor: Cursor) -> bytes:
        """The serialized `cursor` field of a message. Streams of one filter at one change
        share their cursor: signed once, not once per stream (a release to 1,000 streams)."""
        field = self._fields.get(cursor)
        if field is None:
            if len(self._fields) >= CURSOR_MEMO:
                self._fields.clear()
            token = self.codec.encode(cursor)
            field = self._fields[cursor] = feed_pb2.WatchDropsResponse(
                cursor=token
            ).SerializeToString()
        return field

    async def WatchDrops(
        self, request: feed_pb2.WatchDropsRequest | Undecodable, context: Context
    ) -> None:
        try:
            with database_errors():
                watch = from_watch(
                    request, self.codec, self.settings.watch_default_heartbeat_seconds
                )
                if watch.cursor is not None:
                    async with self.engine.connect() as conn:
                        await store.check_retained(conn, watch.cursor)
        except OutOfRangeError as exc:
            self.metrics.ended.labels("expired").inc()
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
            raise  # unreachable: abort raises
        except DropwatchError as exc:
            self.metrics.ended.labels("refused").inc()
            await abort_call(context, exc)
            raise  # unreachable: abort raises
        try:
            sub = self.hub.subscribe(watch.query, watch.key, watch.cursor)
        except RefusedError as refused:  # the request's own cursor, if any, is still good
            self.metrics.ended.labels(refused.ending.reason).inc()
            message = refused.ending.message
            if isinstance(request, feed_pb2.WatchDropsRequest) and request.cursor:
                context.set_trailing_metadata(((CURSOR_KEY, request.cursor),))
                message += f"; cursor={request.cursor}"
            await context.abort(refused.ending.code, message)
            raise  # unreachable
        stream = Stream(self, sub, watch, context)
        ending = await self._serve(stream)
        self.metrics.ended.labels(ending.reason).inc()
        if not stream.resumable:  # ended inside its initial state: nothing to resume from
            await context.abort(ending.code, f"{ending.message}; {INCOMPLETE}")
        token = self.codec.encode(sub.cursor)
        context.set_trailing_metadata(((CURSOR_KEY, token),))
        await context.abort(ending.code, f"{ending.message}; cursor={token}")

    async def _serve(self, stream: Stream) -> Ending:
        sub = stream.sub
        try:
            with database_errors():
                return await stream.run()
        except asyncio.CancelledError:
            if sub.ending is None:  # the consumer went away (or the server stops at once)
                self.metrics.ended.labels("client").inc()
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # interrupted by `Subscription.end` while blocked sending
            return sub.ending
        except OutOfRangeError as exc:  # retention pruned what a catch-up was still reading
            return Ending(grpc.StatusCode.OUT_OF_RANGE, "expired", str(exc))
        except DropwatchError as exc:
            log.warning("a stream's own read failed: %s", exc)
            return DATABASE
        except Exception:
            log.exception("WatchDrops failed")
            return INTERNAL
        finally:
            self.hub.unsubscribe(sub)


class Stream:
    """One open stream: its initial state and catch-up, then the live loop."""

    def __init__(self, service: WatchService, sub: Subscription, watch: Watch, context: Context):
        self.service = service
        self.sub = sub
        self.watch = watch
        self.context = context
        self.metrics = service.metrics
        self.prime = service.settings.prime_anchors
        age = service.settings.watch_max_age_seconds * (1 - random.random() * AGE_JITTER)
        self.deadline = sub.deadline = time.monotonic() + age
        self.last_sent = time.monotonic()
        self.resumable = not watch.initial  # an initial state's end carries the first cursor

    async def run(self) -> Ending:
        if self.watch.initial or self.watch.cursor is not None:
            self.sub.catching_up = True
            if self.watch.initial:
                await self._initial_state()
            await self._catch_up()
            self.sub.catching_up = False
        return await self._live()

    async def _initial_state(self) -> None:
        service = self.service
        today = market_today(service.settings.zone, service.clock())
        async with service.engine.connect() as conn:
            state = await store.read_initial_state(conn, self.watch.query, today)
        for drop in state.drops:
            message = feed_pb2.WatchDropsResponse(opened=feed_item(drop, self.prime), initial=True)
            await self._send(message.SerializeToString(), "initial")
        end = feed_pb2.WatchDropsResponse(
            initial_state_end=feed_pb2.InitialStateEnd(items=len(state.drops))
        )
        await self._send(end.SerializeToString(), "initial_state_end", state.cursor)
        self.resumable = True

    async def _catch_up(self) -> None:
        """Read from the database until a read reaches the horizon with nothing dropped from
        the buffer meanwhile; a buffer that overflowed is cleared and read past once more."""
        sub, service = self.sub, self.service
        while sub.ending is None:
            sub.overflowed = False
            truncated = True
            while truncated and sub.ending is None:
                async with service.engine.connect() as conn:
                    page = await store.read_changes(conn, sub.cursor, PAGE, self.watch.query)
                self.metrics.catch_up_reads.inc()
                for change in page.changes:
                    item = pending(change, self.prime)
                    after = sub.cursor.after(change.xact, change.change_id)
                    await self._send(item.body, item.kind, after)
                sub.cursor = page.next
                truncated = page.truncated
                self._check_age()
            if not sub.overflowed:
                return
            sub.pending.clear()

    async def _live(self) -> Ending:
        sub, hub = self.sub, self.service.hub
        heartbeat = self.watch.heartbeat
        while True:
            sub.wake.clear()
            while sub.pending and sub.ending is None:
                item = sub.pending.popleft()
                change = item.change
                if (change.xact, change.change_id) <= position(sub.cursor):
                    continue  # already sent by the catch-up
                after = sub.cursor.after(change.xact, change.change_id)
                if excluded(sub.cursor, change):
                    sub.cursor = after
                    continue  # reflected in the initial state
                await self._send(item.body, item.kind, after)
                lag = dt.datetime.now(dt.UTC) - change.changed_at
                self.metrics.lag.observe(max(0.0, lag.total_seconds()))
            self._check_age()
            if sub.ending is not None:
                return sub.ending
            now = time.monotonic()
            if now - self.last_sent >= heartbeat and hub.healthy and not sub.pending:
                progress = feed_pb2.WatchDropsResponse(
                    progress=feed_pb2.Progress(as_of=_timestamp(hub.as_of))
                )
                after = sub.cursor.after(*sub.hub_position)
                await self._send(progress.SerializeToString(), "progress", after)
                continue
            if sub.pending:
                continue
            wait = min(self.deadline, self.last_sent + heartbeat) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wake.wait(), timeout=max(wait, 0.01))

    def _check_age(self) -> None:
        if time.monotonic() >= self.deadline:
            self.sub.end(MAX_AGE)

    async def _send(self, body: bytes, kind: str, cursor: Cursor | None = None) -> None:
        """Write one message, with `cursor` appended (a serialized message's fields can be
        concatenated). `Subscription.end` interrupts a write the consumer never takes; such a
        message may or may not reach it, so the stream's resume point moves to `cursor` only
        once the write is done (an end's cursor may repeat it: at-least-once, never a gap)."""
        if cursor is not None:
            body += self.service.cursor_field(cursor)
        self.sub.writing = True
        try:
            await self.context.write(body)
        finally:
            self.sub.writing = False
        if cursor is not None:
            self.sub.cursor = cursor
        self.last_sent = time.monotonic()
        self.metrics.messages.labels(kind).inc()


def _timestamp(at: dt.datetime) -> Timestamp:
    return Timestamp(seconds=int(at.timestamp()), nanos=at.microsecond * 1000)
