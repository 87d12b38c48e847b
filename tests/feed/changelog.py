"""Helpers of the change-cursor tests: events written by hand on held-open connections (to
commit them in any order), and a consumer that resumes after every page."""

from __future__ import annotations

import datetime as dt
import itertools

import psycopg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.feed import store
from services.feed.changes import Change
from services.feed.cursor import Cursor, CursorCodec, filter_key
from services.feed.request import FeedQuery
from services.poller import store as poller_store
from services.poller.slots import BucketFetch, Slot, VenueInfo
from tests.seeding import OWNER, Seeder, SeedSlot

DAY = dt.date(2026, 12, 1)
KEYS = itertools.count()
CODEC = CursorCodec(b"k" * 32)

INSERT = """
INSERT INTO drop_events (bucket_date, bucket_id, market, provider, slot_id, venue_id,
    event_type, opened_at, closed_at, drop_duration_seconds, slot_date, slot_time,
    seating_type, party_sizes, time_slot, time_bucket, dedupe_key, drop_event_id)
VALUES (%(d)s, %(b)s, 'nyc', 'resy', %(slot)s, %(v)s, %(t)s, %(o)s, %(c)s, %(dur)s, %(d)s,
    %(st)s, 'Dining Room', %(sizes)s, '19:00', 'prime', %(k)s, %(drop)s)
RETURNING id
"""


async def write(
    conn: psycopg.AsyncConnection[object],
    kind: str = "NEW_DROP",
    *,
    venue: int = 1,
    day: dt.date = DAY,
    sizes: tuple[int, ...] = (2,),
    drop: int | None = None,
    at: dt.datetime = dt.datetime(2026, 12, 1, 16, 0, tzinfo=dt.UTC),
) -> int:
    """One event in `conn`'s open transaction (not committed); its id."""
    key = next(KEYS)
    closed = at if kind in ("CLOSED", "SIZE_CLOSE") else None
    cur = await conn.execute(
        INSERT,
        {
            "d": day,
            "b": f"{day.isoformat()}_19:00",
            "slot": f"s{key}",
            "v": venue,
            "t": kind,
            "o": at,
            "c": closed,
            "dur": 30.0 if kind == "CLOSED" else None,
            "st": dt.time(19, 0),
            "sizes": list(sizes),
            "k": f"t{key}",
            "drop": drop,
        },
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def now_cursor(engine: AsyncEngine) -> Cursor:
    """The cursor of "now" (what an empty ListChanges cursor means)."""
    async with engine.connect() as conn:
        oldest, _ = await store.horizon(conn)
    return Cursor(oldest, 0, filter_key=filter_key(None))


async def drain(
    engine: AsyncEngine, cursor: Cursor, limit: int, query: FeedQuery | None = None
) -> tuple[list[Change], Cursor]:
    """Every change after `cursor`, resuming from an encoded cursor after each page."""
    received: list[Change] = []
    while True:
        async with engine.connect() as conn:
            page = await store.read_changes(conn, cursor, limit, query)
            await conn.commit()
        received += page.changes
        cursor = CODEC.decode(CODEC.encode(page.next), cursor.filter_key)
        if not page.truncated:
            return received, cursor


async def held_poll(
    seeder: Seeder, conn: AsyncConnection, slots: list[SeedSlot], at: dt.datetime
) -> None:
    """A poll opening `slots` (one bucket) written as `Seeder` writes it, in `conn`'s open
    transaction: the caller decides when it commits."""
    bucket = seeder.bucket_of(slots[0])
    current = seeder.state.setdefault(bucket, {})
    for slot in slots:
        current[slot.slot_id] = slot
    fetch = BucketFetch()
    for slot in current.values():
        start = dt.datetime.combine(slot.day, dt.time.fromisoformat(slot.start))
        fetch.venues[slot.venue_id] = VenueInfo(
            slot.venue_id,
            f"Venue {slot.venue_id}",
            "West Village",
            3,
            f"venue-{slot.venue_id}",
            "ny",
        )
        for size in slot.party_sizes:
            fetch.add(Slot(slot.slot_id, slot.venue_id, start, slot.seating), size)
    async with seeder.engine.begin() as lease_conn:
        leased = await poller_store.lease_one(
            lease_conn, owner=OWNER, bucket_id=bucket, lease_seconds=60
        )
    assert leased is not None
    await poller_store.check_lease(conn, leased, OWNER)
    await poller_store.upsert_venues(conn, fetch, "resy")
    await poller_store.write_healthy_poll(
        conn,
        leased,
        fetch,
        market="nyc",
        provider="resy",
        prime=bucket.endswith("19:00"),
        outcome="healthy",
        now=at,
        next_poll_at=at,
    )
