"""The feed's SQL: filtered, de-duplicated, ordered and limited in PostgreSQL.

Both lists read `open_slots` (the poller's current state), never the event history. The shape
keeps the cost flat as data grows: walk `ix_open_slots_opened_at` newest first and keep a row
only if no newer row passes the same filters for its (venue, date) (`NOT EXISTS`, probed on
`ix_open_slots_venue_date_opened`), so the scan stops after about LIMIT rows. (With date
filters the planner may prefer a hash anti-join over the whole JustOpened window: bounded by
the window, but ~20 ms at 1M events; see docs/performance.md.) A request reads at most
`limit + 1` rows (the extra one says whether the answer was truncated). Rows come straight
from the driver as tuples: at 1,000 rows, SQLAlchemy's result processing cost more than the
query.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.feed.paging import Cursor
from services.feed.request import JUST_OPENED, FeedQuery


class FeedRow(NamedTuple):
    event_id: int
    slot_id: str
    bucket_id: str
    venue_id: int
    slot_date: dt.date
    slot_time: dt.time
    seating_type: str
    party_sizes: list[int]
    time_slot: str
    opened_at: dt.datetime
    venue_name: str | None
    neighborhood: str | None
    price_range: int | None
    url_slug: str | None
    location_code: str | None


def _filters(alias: str, query: FeedQuery) -> list[str]:
    """The same predicates for the row and for its 'is there a newer one?' probe."""
    a = alias
    clauses = [
        f"{a}.drop_event_id IS NOT NULL",
        f"{a}.slot_date >= :today",
        f"{a}.opened_at <= :snapshot",
    ]
    if query.kind == JUST_OPENED:
        clauses.append(f"{a}.opened_at >= :window_edge")
    else:
        clauses.append(f"{a}.opened_at < :window_edge")
    if query.dates:
        clauses.append(f"{a}.slot_date = ANY(:dates)")
    if query.party_sizes:
        clauses.append(f"{a}.party_sizes && CAST(:sizes AS smallint[])")
    if query.time_from is not None:
        clauses.append(f"{a}.slot_time >= :time_from")
    if query.time_to is not None:
        clauses.append(f"{a}.slot_time <= :time_to")
    if query.time_slots:
        clauses.append(f"{a}.time_slot = ANY(:time_slots)")
    if query.venue_ids:
        clauses.append(f"{a}.venue_id = ANY(:venue_ids)")
    return clauses


def build_sql(query: FeedQuery, keyset: bool) -> str:
    where = _filters("o", query)
    if keyset:
        where.append("(o.opened_at, o.drop_event_id) < (:after_opened_at, :after_event_id)")
    if query.dedupe:
        newer = " AND ".join(_filters("n", query))
        where.append(
            "NOT EXISTS (SELECT 1 FROM open_slots n"
            " WHERE n.venue_id = o.venue_id AND n.slot_date = o.slot_date"
            " AND (n.opened_at, n.drop_event_id) > (o.opened_at, o.drop_event_id)"
            f" AND {newer})"
        )
    return (
        "SELECT o.drop_event_id, o.slot_id, o.bucket_id, o.venue_id, o.slot_date, o.slot_time,"
        " o.seating_type, o.party_sizes, o.time_slot, o.opened_at,"
        " v.name, v.neighborhood, v.price_range, v.url_slug, v.location_code"
        " FROM open_slots o LEFT JOIN venues v ON v.venue_id = o.venue_id"
        f" WHERE {' AND '.join(where)}"
        " ORDER BY o.opened_at DESC, o.drop_event_id DESC"
        " LIMIT :fetch"
    )


def params(
    query: FeedQuery, today: dt.date, snapshot: dt.datetime, cursor: Cursor | None
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "today": today,
        "snapshot": snapshot,
        "window_edge": snapshot - dt.timedelta(seconds=query.age_seconds),
        "dates": list(query.dates),
        "sizes": list(query.party_sizes),
        "time_from": query.time_from,
        "time_to": query.time_to,
        "time_slots": list(query.time_slots),
        "venue_ids": list(query.venue_ids),
        "fetch": query.limit + 1,
    }
    if cursor is not None:
        values["after_opened_at"] = cursor.opened_at
        values["after_event_id"] = cursor.event_id
    return values


async def fetch_feed(
    conn: AsyncConnection,
    query: FeedQuery,
    *,
    today: dt.date,
    snapshot: dt.datetime,
    cursor: Cursor | None,
) -> list[FeedRow]:
    """At most `query.limit + 1` rows, newest first."""
    sql = _to_driver_style(build_sql(query, keyset=cursor is not None))
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    async with driver.cursor() as cur:
        await cur.execute(sql, params(query, today, snapshot, cursor))
        return [FeedRow._make(row) for row in await cur.fetchall()]


def _to_driver_style(sql: str) -> str:
    """`:name` placeholders (readable, shared with EXPLAIN tests) to psycopg's `%(name)s`."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


async def data_as_of(conn: AsyncConnection, today: dt.date) -> dt.datetime | None:
    """The latest committed healthy poll of a live bucket: what the answer reflects."""
    result = await conn.execute(
        text("SELECT max(last_healthy_poll_at) FROM discovery_buckets WHERE bucket_date >= :today"),
        {"today": today},
    )
    value = result.scalar_one()
    return value if isinstance(value, dt.datetime) else None
