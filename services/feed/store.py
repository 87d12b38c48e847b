"""The feed's database layer: runs the statements of `sql.py`. Never commits.

The RPC handler (`servicer.py`) owns the read-only transaction. List rows come straight from
the driver as tuples: at 1,000 rows, SQLAlchemy's result processing cost more than the query.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from services.feed import sql
from services.feed.paging import Boundary, Cursor
from services.feed.request import FeedQuery


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


async def fetch_feed(
    conn: AsyncConnection,
    query: FeedQuery,
    *,
    today: dt.date,
    boundary: Boundary,
    cursor: Cursor | None,
) -> list[FeedRow]:
    """At most `query.limit + 1` rows, newest first."""
    statement = _to_driver_style(sql.build_sql(query, keyset=cursor is not None))
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    async with driver.cursor() as cur:
        await cur.execute(statement, sql.params(query, today, boundary, cursor))
        return [FeedRow._make(row) for row in await cur.fetchall()]


def _to_driver_style(statement: str) -> str:
    """`:name` placeholders (readable, shared with EXPLAIN tests) to psycopg's `%(name)s`."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", statement)


async def set_statement_timeout(conn: AsyncConnection, milliseconds: int) -> None:
    """Bound the rest of this transaction's statements (the client's deadline, capped)."""
    await conn.execute(sql.SET_STATEMENT_TIMEOUT, {"ms": str(milliseconds)})


async def horizon(conn: AsyncConnection) -> tuple[int, int]:
    """The oldest transaction id still in flight and the next one (see `sql.HORIZON`)."""
    oldest, following = (await conn.execute(sql.HORIZON)).one()
    return int(oldest), int(following)


async def data_as_of(conn: AsyncConnection, today: dt.date) -> dt.datetime | None:
    """The latest committed healthy poll of a live bucket: what the answer reflects."""
    value = (await conn.execute(sql.DATA_AS_OF, {"today": today})).scalar_one()
    return value if isinstance(value, dt.datetime) else None
