"""The FeedService RPCs: validate, read (or serve the cache), build the response.

Domain errors are mapped to gRPC status codes here and only here (`_STATUS`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.feed import store
from services.feed.cache import AnswerCache
from services.feed.errors import InvalidArgumentError
from services.feed.paging import Cursor, PageTokens
from services.feed.request import FeedQuery, from_just_opened, from_still_open
from services.feed.settings import FeedSettings
from shared.db.buckets import market_today
from shared.db.engine import unavailable_as_error
from shared.errors import DatabaseUnavailableError, DropwatchError
from shared.gen.dropwatch.feed.v1 import feed_pb2

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Response = TypeVar("Response", feed_pb2.JustOpenedResponse, feed_pb2.StillOpenResponse)


class DeadlineError(DropwatchError):
    """The answer could not be ready before the client's deadline (or the server's bound)."""


_STATUS: dict[type[DropwatchError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    DatabaseUnavailableError: grpc.StatusCode.UNAVAILABLE,
    DeadlineError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class FeedServicer:
    """Implements dropwatch.feed.v1.FeedService (registered by `server._method_handlers`)."""

    def __init__(
        self,
        settings: FeedSettings,
        engine: AsyncEngine,
        tokens: PageTokens,
        cache: AnswerCache,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.tokens = tokens
        self.cache = cache
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))

    async def JustOpened(self, request: feed_pb2.JustOpenedRequest, context: Context) -> bytes:
        return await self._serve(
            "JustOpened", lambda: from_just_opened(request), context, feed_pb2.JustOpenedResponse
        )

    async def StillOpen(self, request: feed_pb2.StillOpenRequest, context: Context) -> bytes:
        return await self._serve(
            "StillOpen", lambda: from_still_open(request), context, feed_pb2.StillOpenResponse
        )

    async def _serve(
        self,
        rpc: str,
        validate: Callable[[], FeedQuery],
        context: Context,
        make: Callable[[], Response],
    ) -> bytes:
        """Validate, answer, and map every failure to a status code (`_abort`)."""
        try:
            return await self._cached(rpc, validate(), context, make)
        except DropwatchError as exc:
            await _abort(context, exc)
            raise  # unreachable: abort raises
        except Exception:  # a bug or an unexpected database error: log it, answer INTERNAL
            log.exception("%s failed", rpc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise

    async def _cached(
        self,
        rpc: str,
        query: FeedQuery,
        context: Context,
        make: Callable[[], Response],
    ) -> bytes:
        """The serialized answer: from the cache while fresh, else from PostgreSQL."""
        key = (rpc, query.fingerprint(), query.limit, query.page_token)
        cached = self.cache.get(rpc, key)
        if cached is not None:
            return cached
        generation, started = self.cache.generation(), time.monotonic()
        answer = (await self._answer(query, context, make())).SerializeToString()
        self.cache.put(key, answer, generation, started)
        return answer

    async def _answer(self, query: FeedQuery, context: Context, response: Response) -> Response:
        cursor = (
            self.tokens.read(query.page_token, query.fingerprint()) if query.page_token else None
        )
        snapshot = cursor.snapshot if cursor else self.clock()
        today = market_today(self.settings.zone, self.clock())
        timeout_ms = self._timeout_ms(context)
        try:
            with unavailable_as_error():
                async with self.engine.connect() as conn, conn.begin():
                    await store.set_statement_timeout(conn, timeout_ms)
                    rows = await store.fetch_feed(
                        conn, query, today=today, snapshot=snapshot, cursor=cursor
                    )
                    as_of = await store.data_as_of(conn, today)
        except sa_exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) == "57014":  # query_canceled
                raise DeadlineError("the query did not finish in time") from exc
            raise
        page = rows[: query.limit]
        self._fill(response, page, query)
        response.applied_limit = query.limit
        response.limit_capped = query.limit_capped
        response.truncated = len(rows) > query.limit
        if response.truncated:
            last = page[-1]
            response.next_page_token = self.tokens.issue(
                query.fingerprint(), Cursor(snapshot, last.opened_at, last.event_id)
            )
        if as_of is not None:
            response.as_of.FromDatetime(as_of)
        return response

    def _timeout_ms(self, context: Context) -> int:
        """The statement timeout for this request: the client's deadline, capped by ours."""
        bound = self.settings.db_statement_timeout_ms or 60_000
        remaining = context.time_remaining()
        if remaining is None:
            return bound
        if remaining <= 0.001:
            raise DeadlineError("the deadline had passed before the query started")
        return max(1, min(bound, int(remaining * 1000)))

    def _fill(self, response: Response, rows: list[store.FeedRow], query: FeedQuery) -> None:
        """Build the items, one constructor call each (field-by-field sets cost ~2x).

        An answer repeats few venues, dates and times, so their messages and strings are built
        once per answer and reused.
        """
        prime = set(self.settings.prime_anchors)
        venues: dict[int, tuple[feed_pb2.Venue, str]] = {}
        dates: dict[dt.date, str] = {}
        times: dict[dt.time, str] = {}
        items = []
        for row in rows:
            venue = venues.get(row.venue_id)
            if venue is None:
                url = ""
                if row.url_slug and row.location_code:
                    url = f"https://resy.com/cities/{row.location_code}/{row.url_slug}"
                message = feed_pb2.Venue(
                    id=row.venue_id,
                    name=row.venue_name or "",
                    neighborhood=row.neighborhood or "",
                    price_range=row.price_range or 0,
                    url=url,
                )
                venue = venues[row.venue_id] = (message, url)
            date = dates.get(row.slot_date) or dates.setdefault(
                row.slot_date, row.slot_date.isoformat()
            )
            hhmm = times.get(row.slot_time) or times.setdefault(
                row.slot_time, row.slot_time.strftime("%H:%M")
            )
            booking = ""
            if venue[1]:
                seats = min(row.party_sizes) if row.party_sizes else 2
                booking = f"{venue[1]}?date={date}&seats={seats}"
            opened = row.opened_at
            items.append(
                feed_pb2.FeedItem(
                    event_id=row.event_id,
                    slot_id=row.slot_id,
                    bucket_id=row.bucket_id,
                    reservation_date=date,
                    slot_time=hhmm,
                    seating_type=row.seating_type,
                    party_sizes=row.party_sizes,
                    time_slot=row.time_slot,
                    time_bucket=_PRIME if row.time_slot in prime else _OFF_PEAK,
                    opened_at=Timestamp(
                        seconds=int(opened.timestamp()), nanos=opened.microsecond * 1000
                    ),
                    booking_url=booking,
                    venue=venue[0],
                )
            )
        response.items.extend(items)


_PRIME = feed_pb2.TIME_BUCKET_PRIME
_OFF_PEAK = feed_pb2.TIME_BUCKET_OFF_PEAK


async def _abort(context: Context, exc: DropwatchError) -> None:
    code = _STATUS.get(type(exc), grpc.StatusCode.INTERNAL)
    if code is grpc.StatusCode.INTERNAL:
        log.error("feed request failed: %s", exc)
    await context.abort(code, str(exc))
