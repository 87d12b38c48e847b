"""The replica's one change reader: read each committed change once, fan it out in memory.

The poller's NOTIFY (`contracts.FEED_CHANNEL`, after every commit that wrote events) only wakes
the reader; what it reads is decided by its own cursor, unfiltered, in pages until drained.
Without a NOTIFY it reads anyway every `watch_check_seconds` (a NOTIFY is lost while the
listening connection is down, and is not sent by every writer), so a missed wake-up delays a
change by at most that long. Each change is matched once per distinct filter and its message
built once; every stream gets it through its bounded buffer (`subscription.py`), so a slow
stream never holds the reader back. The reader holds a pooled connection only while reading;
the listening connection is its own and reconnects with backoff.

While the database is unreachable the reader's cursor stands still (so no stream's cursor moves
past anything unread), heartbeats pause, and once it has been down `watch_unavailable_seconds`
every stream ends UNAVAILABLE with its cursor, to resume on a replica that can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterable

import grpc
import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.feed import sql, store
from services.feed.changes import Change, matches, to_proto
from services.feed.cursor import Cursor, filter_key
from services.feed.metrics import WatchMetrics
from services.feed.request import FeedQuery
from services.feed.settings import FeedSettings
from services.feed.watch.subscription import (
    DATABASE,
    MAX_AGE,
    SHUTDOWN,
    Ending,
    Pending,
    Subscription,
    position,
)
from shared.db.urls import libpq_url
from shared.gen.dropwatch.feed.v1 import feed_pb2

log = logging.getLogger(__name__)

# Changes per read, at most; a release of more is read in several pages, in order. A page is
# at most half a stream's buffer: a stream that keeps up always has room for the next one.
PAGE = 500


class RefusedError(Exception):
    """A stream cannot open here now; `ending` says with which status."""

    def __init__(self, ending: Ending) -> None:
        super().__init__(ending.message)
        self.ending = ending


AT_LIMIT = "this feed replica is serving its limit of {} streams; retry with back-off"


class Hub:
    """Reads changes for every stream of this replica (`start` it once, `stop` at shutdown)."""

    def __init__(
        self, engine: AsyncEngine, database_url: str, settings: FeedSettings, metrics: WatchMetrics
    ) -> None:
        self.engine = engine
        self.conninfo = libpq_url(database_url)
        self.settings = settings
        self.metrics = metrics
        self.page = min(PAGE, settings.watch_buffer_messages // 2)
        self.position: Cursor | None = None
        self.as_of = dt.datetime.now(dt.UTC)
        self.ready = asyncio.Event()  # the first read succeeded: `position` is set
        self.down_since: float | None = None
        self.closing = False
        self._groups: dict[bytes, tuple[FeedQuery, set[Subscription]]] = {}
        self._count = 0
        self._notified = asyncio.Event()
        self._last_xact = -1
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._read())]

    async def stop(self) -> None:
        """Refuse new streams, end every open one (UNAVAILABLE + cursor), stop reading."""
        self.closing = True
        self.end_all(SHUTDOWN)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def healthy(self) -> bool:
        return self.down_since is None and self.position is not None

    # -- streams --------------------------------------------------------------------------

    def subscribe(self, query: FeedQuery, key: bytes, cursor: Cursor | None) -> Subscription:
        """Register a stream, at `cursor` (it catches up itself) or at the hub's position."""
        if self.closing:
            raise RefusedError(SHUTDOWN)
        if self._count >= self.settings.watch_max_streams:
            limit = self.settings.watch_max_streams
            raise RefusedError(
                Ending(grpc.StatusCode.RESOURCE_EXHAUSTED, "limit", AT_LIMIT.format(limit))
            )
        if cursor is None:
            if not self.healthy or self.position is None:
                raise RefusedError(DATABASE)
            cursor = Cursor(self.position.position_xact, self.position.position_id, filter_key=key)
        sub = Subscription(query, key, cursor, self.settings.watch_buffer_messages)
        if self.position is not None:
            sub.moved(position(self.position))
        self._groups.setdefault(key, (query, set()))[1].add(sub)
        self._count += 1
        self.metrics.streams.set(self._count)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        group = self._groups.get(sub.key)
        if group is None or sub not in group[1]:
            return
        group[1].discard(sub)
        if not group[1]:
            del self._groups[sub.key]
        self._count -= 1
        self.metrics.streams.set(self._count)

    def subscriptions(self) -> Iterable[Subscription]:
        return [sub for _, subs in self._groups.values() for sub in subs]

    def end_all(self, ending: Ending) -> None:
        for sub in self.subscriptions():
            sub.end(ending)

    # -- reading --------------------------------------------------------------------------

    async def _read(self) -> None:
        """Read after every wake-up, and at least every `watch_check_seconds`."""
        check = self.settings.watch_check_seconds
        while True:
            trigger = "check"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._notified.wait(), timeout=check)
                trigger = "notify"
            self._notified.clear()
            try:
                await self._drain(trigger)
            except Exception as exc:  # a lost database, or a bug: both retried and logged
                self._failed(exc)
            else:
                self.down_since = None
                self.ready.set()
            self._end_old()

    def _end_old(self) -> None:
        """End the streams past their maximum age; also those blocked sending to a consumer
        that does not read (the stream itself would notice only after its write)."""
        now = time.monotonic()
        for sub in self.subscriptions():
            if now >= sub.deadline:
                sub.end(MAX_AGE)

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            # A driver error is an outage (its text may hold connection details: not logged);
            # anything else is a bug, logged whole.
            bug = not isinstance(exc, psycopg.Error | sa_exc.DBAPIError | OSError)
            log.warning(
                "watch hub cannot read changes (%s); retrying",
                type(exc).__name__,
                exc_info=exc if bug else None,
            )
        if now - self.down_since >= self.settings.watch_unavailable_seconds:
            self.end_all(DATABASE)

    async def _drain(self, trigger: str) -> None:
        async with self.engine.connect() as conn:
            if self.position is None or not self._count:
                # The current moment. With no stream open, nothing is read: the position only
                # follows the horizon (unless a stream subscribed meanwhile: then it reads).
                oldest, _ = await store.horizon(conn)
                now = Cursor(oldest, 0, filter_key=filter_key(None))
                if self.position is None:
                    self.position = now
                if not self._count:
                    self.position = self.position.after(oldest, 0)
                    self.as_of = dt.datetime.now(dt.UTC)
                    return
            while True:
                page = await store.read_changes(conn, self.position, self.page, None)
                self.metrics.reads.labels(trigger).inc()
                self._fan_out(page.changes)
                self.position = page.next
                self.as_of = page.as_of
                if not page.truncated:
                    break
                await conn.rollback()  # each page its own snapshot; no long transaction
        reached = position(self.position)
        for sub in self.subscriptions():
            sub.moved(reached)

    def _fan_out(self, changes: list[Change]) -> None:
        """Each change to every matching stream: matched once per filter, built once."""
        for change in changes:
            if change.xact != self._last_xact:
                self._last_xact = change.xact
                self.metrics.commits.inc()
            item: Pending | None = None
            for query, subs in self._groups.values():
                if not matches(query, change):
                    continue
                if item is None:
                    item = pending(change, self.settings.prime_anchors)
                for sub in subs:
                    sub.offer(item)

    # -- wake-ups -------------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN on the poller's channel; every notification (and every reconnect, which may
        have missed some) wakes the reader."""
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(sql.LISTEN)
                    self._notified.set()
                    delay = 0.5
                    async for _note in conn.notifies():
                        self._notified.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: the periodic check still reads
                log.warning("watch hub listener disconnected (%s); retrying", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)


def pending(change: Change, prime: tuple[str, ...]) -> Pending:
    """The change as a WatchDropsResponse without its cursor (each stream appends its own)."""
    message = to_proto(change, "", prime)
    kind = message.WhichOneof("change")
    assert kind is not None
    body = feed_pb2.WatchDropsResponse(**{kind: getattr(message, kind)})
    return Pending(change, body.SerializeToString(), kind)
