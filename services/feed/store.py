"""The feed's database layer: runs the statements of `sql.py`. Never commits.

The RPC handler (`servicer.py`) owns the read-only transaction. List rows come straight from
the driver as tuples: at 1,000 rows, SQLAlchemy's result processing cost more than the query.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from services.feed import sql
from services.feed.changes import CLOSED, OPENED, SIZES, Change, ChangePage, OutOfRangeError
from services.feed.cursor import Cursor as ChangeCursor
from services.feed.cursor import filter_key
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


# ---- Change cursor (#15): reads of `sql.build_changes_sql` and the initial state ----


async def read_changes(
    conn: AsyncConnection, after: ChangeCursor, limit: int, query: FeedQuery | None = None
) -> ChangePage:
    """The changes after `after` (at most `limit`), in cursor order, then the retention check.

    Three statements, whatever the number of changes: the horizon, the read, the floor. Run it
    in READ COMMITTED (the default): the floor is read after the changes, in a later snapshot,
    so a partition dropped just before the read is seen by the check (OutOfRangeError), never
    skipped silently; a drop after the read's start waits for this transaction (its lock).
    `query` None = every change (the stream hub filters in memory with `changes.matches`).
    """
    row = (await conn.execute(sql.CHANGE_HORIZON)).one()
    horizon_xact, as_of = int(row[0]), row[1]
    exclusion = after.skip_below is not None
    values: dict[str, Any] = {
        "after_xact": str(after.position_xact),
        "after_id": after.position_id,
        "horizon": str(horizon_xact),
        "fetch": limit + 1,
        **sql.filter_params(query),
    }
    if exclusion:
        values["skip_below"] = str(after.skip_below)
        values["skip_except"] = [str(x) for x in sorted(after.skip_except)]
    statement = _to_driver_style(sql.build_changes_sql(query, exclusion))
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    async with driver.cursor() as cur:
        await cur.execute(statement, values)
        rows = await cur.fetchall()
    await check_retained(conn, after)
    changes = [_change(r) for r in rows[:limit]]
    truncated = len(rows) > limit
    following = after
    if changes:
        following = after.after(changes[-1].xact, changes[-1].change_id)
    if not truncated:
        following = following.after(horizon_xact, 0)
    return ChangePage(changes, following, truncated, as_of)


async def check_retained(conn: AsyncConnection, cursor: ChangeCursor) -> None:
    """OutOfRangeError if events after `cursor` may have been pruned (its position is at or
    below the highest xact_id retention removed)."""
    floor = (await conn.execute(sql.CHANGE_FLOOR)).one_or_none()
    if floor is not None and cursor.position_xact <= int(floor[0]):
        raise OutOfRangeError(int(floor[0]), floor[1], floor[2])


async def read_initial_state(
    conn: AsyncConnection, query: FeedQuery | None, today: dt.date
) -> InitialState:
    """Every open drop matching `query` (slot on or after `today`) and the cursor that follows
    it exactly: no gap, no duplicate. Must open its transaction: the first statement sets
    REPEATABLE READ, so the drops and the snapshot they are read in are one moment.

    Cursor: position (xmin, 0), and every transaction below xmax that is not in the
    snapshot's in-progress list is skipped (its events are already in the drops read here).
    """
    await conn.execute(sql.SET_REPEATABLE_READ)
    xmin, xmax, xip, as_of = (await conn.execute(sql.SNAPSHOT)).one()
    low, high = int(xmin), int(xmax)
    cursor = ChangeCursor(
        low,
        0,
        high if high > low else None,
        frozenset(int(x) for x in xip) if high > low else frozenset(),
        filter_key(query),
    )
    values = {"today": today, **sql.filter_params(query)}
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    async with driver.cursor() as cur:
        await cur.execute(_to_driver_style(sql.build_open_drops_sql(query)), values)
        rows = [FeedRow._make(r) for r in await cur.fetchall()]
    return InitialState([_opened(r) for r in rows], cursor, as_of)


@dataclass(frozen=True)
class InitialState:
    drops: list[Change]
    cursor: ChangeCursor
    as_of: dt.datetime


def _opened(row: FeedRow) -> Change:
    return Change(
        change_id=row.event_id,
        kind=OPENED,
        xact=0,
        event_id=row.event_id,
        bucket_id=row.bucket_id,
        slot_id=row.slot_id,
        venue_id=row.venue_id,
        slot_date=row.slot_date,
        slot_time=row.slot_time,
        seating_type=row.seating_type,
        party_sizes=tuple(row.party_sizes),
        time_slot=row.time_slot,
        opened_at=row.opened_at,
        changed_at=row.opened_at,
        venue_name=row.venue_name,
        neighborhood=row.neighborhood,
        price_range=row.price_range,
        url_slug=row.url_slug,
        location_code=row.location_code,
    )


def _change(row: tuple[Any, ...]) -> Change:
    """A `sql.build_changes_sql` row as a Change (what each event type holds: sql.py)."""
    (change_id, event_type, xact, bucket_id, slot_id, venue_id, slot_date, slot_time) = row[:8]
    (seating, sizes, time_slot, opened_at, closed_at, duration, drop_id, created_at) = row[8:16]
    sizes_after, drop_opened_at, opening_sizes, name, neighborhood, price, slug, location = row[16:]
    common: dict[str, Any] = {
        "change_id": change_id,
        "xact": int(xact),
        "bucket_id": bucket_id,
        "slot_id": slot_id,
        "venue_id": venue_id,
        "slot_date": slot_date,
        "slot_time": slot_time,
        "seating_type": seating,
        "time_slot": time_slot,
        "venue_name": name,
        "neighborhood": neighborhood,
        "price_range": price,
        "url_slug": slug,
        "location_code": location,
    }
    if event_type == "NEW_DROP":
        return Change(
            kind=OPENED,
            event_id=change_id,
            party_sizes=tuple(sizes),
            opened_at=opened_at,
            changed_at=opened_at,
            **common,
        )
    if event_type == "CLOSED":
        # The drop as its opening reported it; what it still had when it closed went away.
        return Change(
            kind=CLOSED,
            event_id=drop_id,
            party_sizes=tuple(sizes if opening_sizes is None else opening_sizes),
            removed=tuple(sizes),
            opened_at=opened_at,
            changed_at=closed_at or created_at,
            closed_at=closed_at or created_at,
            open_seconds=duration,
            **common,
        )
    size_open = event_type == "SIZE_OPEN"
    return Change(
        kind=SIZES,
        event_id=drop_id,
        party_sizes=tuple(sizes_after or ()),
        # A SIZE_OPEN row's opened_at is when the size opened; the drop's is its NEW_DROP's.
        opened_at=drop_opened_at or opened_at,
        changed_at=(opened_at if size_open else closed_at) or created_at,
        added=tuple(sizes) if size_open else (),
        removed=() if size_open else tuple(sizes),
        **common,
    )
