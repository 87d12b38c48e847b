"""The FeedService RPCs: validate, read (or serve the cache), build the response.

Domain errors are mapped to gRPC status codes here and only here (`_STATUS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.feed import store
from services.feed.boundary import Boundaries
from services.feed.cache import AnswerCache
from services.feed.errors import InvalidArgumentError
from services.feed.metrics import horizon_lag_gauge
from services.feed.paging import Boundary, Cursor, PageTokens
from services.feed.request import FeedQuery, Undecodable, from_just_opened, from_still_open
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
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.tokens = tokens
        self.cache = cache
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        # First pages asked in the same moment share one boundary, so JustOpened and StillOpen
        # split the same data at the same edge, cached or not (`boundary.py`).
        self.boundaries = Boundaries(settings.cache_ttl_seconds or BOUNDARY_SECONDS_WITHOUT_CACHE)
        self.horizon_lag = horizon_lag_gauge(
            registry if registry is not None else CollectorRegistry()
        )

    async def JustOpened(
        self, request: feed_pb2.JustOpenedRequest | Undecodable, context: Context
    ) -> bytes:
        return await self._serve(
            "JustOpened", lambda: from_just_opened(request), context, feed_pb2.JustOpenedResponse
        )

    async def StillOpen(
        self, request: feed_pb2.StillOpenRequest | Undecodable, context: Context
    ) -> bytes:
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
        """Validate, answer, and map every failure to a status code (`abort_call`)."""
        try:
            with database_errors():
                return await self._cached(rpc, validate(), context, make)
        except DropwatchError as exc:
            await abort_call(context, exc)
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
        """The serialized answer: from the cache while fresh, else from PostgreSQL.

        The key is the whole normalised query (limit and limit_capped included), the decoded
        page cursor and the boundary it is answered at: everything that shapes the answer.
        """
        cursor = (
            self.tokens.read(query.page_token, query.fingerprint()) if query.page_token else None
        )
        generation = self.cache.generation()
        boundary = (
            cursor.boundary
            if cursor
            else await self.boundaries.current(generation, self._take_boundary)
        )
        # Keyed on the decoded cursor, not the token's text: two spellings of one page are
        # one entry, and a caller cannot grow the cache with padded tokens.
        key = (dataclasses.replace(query, page_token=""), boundary, cursor)
        cached = self.cache.get(rpc, key)
        if cached is not None:
            return cached
        started = time.monotonic()
        response = await self._answer(query, boundary, cursor, context, make())
        answer = response.SerializeToString()
        self.cache.put(key, answer, generation, started)
        return answer

    async def _take_boundary(self) -> Boundary:
        self.cache.forget()
        at = self.clock()
        async with self.engine.connect() as conn:
            oldest, following = await store.horizon(conn)
        self.horizon_lag.set(following - oldest)
        return Boundary(at, oldest)

    async def _answer(
        self,
        query: FeedQuery,
        boundary: Boundary,
        cursor: Cursor | None,
        context: Context,
        response: Response,
    ) -> Response:
        today = market_today(self.settings.zone, boundary.at)
        timeout_ms = self.timeout_ms(context)
        async with self.engine.connect() as conn, conn.begin():
            await store.set_statement_timeout(conn, timeout_ms)
            rows = await store.fetch_feed(
                conn, query, today=today, boundary=boundary, cursor=cursor
            )
            as_of = await store.data_as_of(conn, today)
        page = rows[: query.limit]
        self._fill(response, page, query)
        response.applied_limit = query.limit
        response.limit_capped = query.limit_capped
        response.truncated = len(rows) > query.limit
        if response.truncated:
            last = page[-1]
            response.next_page_token = self.tokens.issue(
                query.fingerprint(), Cursor(boundary, last.opened_at, last.event_id)
            )
        if as_of is None:  # no live bucket has had a healthy poll: say so, never leave it unset
            response.no_data_yet = True
            as_of = boundary.at
        response.as_of.FromDatetime(as_of)
        return response

    def timeout_ms(self, context: Context) -> int:
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
                    # Provider text: each part percent-encoded, so it cannot choose the path,
                    # query or fragment of the link.
                    url = (
                        f"https://resy.com/cities/{quote(row.location_code, safe='')}/"
                        f"{quote(row.url_slug, safe='')}"
                    )
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


BOUNDARY_SECONDS_WITHOUT_CACHE = 1.0

# SQLSTATEs: a statement cancelled by its timeout, a lock not granted in time.
_TOO_SLOW = {"57014", "55P03"}


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """Database errors as domain errors, for the SQLAlchemy path and the raw-driver path alike
    (`store.fetch_feed` runs its query on the psycopg connection itself)."""
    try:
        with unavailable_as_error():
            yield
    except sa_exc.DBAPIError as exc:
        _translate(exc.orig)
        raise
    except psycopg.Error as exc:
        _translate(exc)
        raise


def _translate(exc: BaseException | None) -> None:
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in _TOO_SLOW:
        raise DeadlineError("the query did not finish in time") from exc
    if isinstance(exc, psycopg.OperationalError) and (
        sqlstate is None or sqlstate.startswith("08") or sqlstate.startswith("57P")
    ):
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailableError(f"cannot reach PostgreSQL: {reason}") from exc


async def abort_call(context: Context, exc: DropwatchError) -> None:
    code = _STATUS.get(type(exc), grpc.StatusCode.INTERNAL)
    if code is grpc.StatusCode.INTERNAL:
        log.error("feed request failed: %s", exc)
    if code is grpc.StatusCode.UNAVAILABLE:
        # The detail (host, port) is for the log; callers learn only what happened.
        log.warning("feed request failed: %s", exc)
        await context.abort(code, "database unavailable")
    await context.abort(code, str(exc))
