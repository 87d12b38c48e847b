"""Change reads in commit order (services/feed/changes.py, store.read_changes) on real
PostgreSQL: writers that commit out of id order are never skipped, the initial state and the
live changes after it have no gap and no duplicate, expired cursors are OUT_OF_RANGE."""

from __future__ import annotations

import asyncio
import random

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.feed import store
from services.feed.changes import CLOSED, OPENED, SIZES
from shared.db.engine import make_async_engine
from tests.feed.changelog import drain, now_cursor, write
from tests.feed.conftest import feed_settings
from tests.seeding import Seeder


@pytest.fixture
async def aengine(db_url: str, seeder: Seeder) -> AsyncEngine:
    engine = make_async_engine(feed_settings(db_url), name="changes", url=db_url)
    yield engine  # type: ignore[misc]
    await engine.dispose()


async def connect(db_url: str) -> psycopg.AsyncConnection[object]:
    url = db_url.replace("postgresql+psycopg://", "postgresql://")
    return await psycopg.AsyncConnection.connect(url)


async def test_a_transaction_that_commits_late_is_not_skipped(
    db_url: str, aengine: AsyncEngine
) -> None:
    """T1 takes its transaction id first, T2 writes (the lower id) and commits, a reader reads,
    T1 writes (a higher id) and commits: the reader gets T1's event, in (xact, id) order."""
    start = await now_cursor(aengine)
    t1, t2 = await connect(db_url), await connect(db_url)
    try:
        await t1.execute("SELECT pg_current_xact_id()")  # T1's xact id is the lower one
        b = await write(t2)
        await t2.commit()
        seen, cursor = await drain(aengine, start, 10)
        assert seen == []  # T2 is above the horizon while T1 is in flight
        a = await write(t1)
        assert a > b  # ids out of commit-order
        await t1.commit()
        seen, cursor = await drain(aengine, cursor, 10)
        assert [c.change_id for c in seen] == [a, b]  # T1 first: its xact id is lower
        assert seen[0].xact < seen[1].xact
        again, _ = await drain(aengine, cursor, 10)
        assert again == []
    finally:
        await t1.close()
        await t2.close()


async def test_concurrent_writers_and_a_resuming_reader_get_every_event_once(
    db_url: str, aengine: AsyncEngine
) -> None:
    """Writers commit (or roll back) in random order while a consumer resumes from an encoded
    cursor after every small page: what it received is every committed event exactly once,
    in cursor order."""
    rng = random.Random(15)
    start = await now_cursor(aengine)
    committed: set[int] = set()
    received: list = []
    done = asyncio.Event()

    async def writer(n: int) -> None:
        conn = await connect(db_url)
        try:
            for _ in range(12):
                ids = [await write(conn, venue=n) for _ in range(rng.randint(1, 4))]
                await asyncio.sleep(rng.random() * 0.03)
                if rng.random() < 0.15:
                    await conn.rollback()
                else:
                    await conn.commit()
                    committed.update(ids)
        finally:
            await conn.close()

    async def reader() -> None:
        cursor = start
        while True:
            finished = done.is_set()
            seen, cursor = await drain(aengine, cursor, 3)
            received.extend(seen)
            if finished:
                return
            await asyncio.sleep(0.005)

    task = asyncio.create_task(reader())
    await asyncio.gather(*(writer(n) for n in range(1, 6)))
    done.set()
    await task
    ids = [c.change_id for c in received]
    assert len(ids) == len(set(ids))  # no duplicate without a resume across a failure
    assert set(ids) == committed
    order = [(c.xact, c.change_id) for c in received]
    assert order == sorted(order)


async def test_event_kinds_carry_their_drop(db_url: str, aengine: AsyncEngine) -> None:
    """NEW_DROP -> opened; SIZE_OPEN / SIZE_CLOSE -> sizes with the drop's sizes after the
    change (here the NEW_DROP's with the change applied: the slot row is not in open_slots);
    CLOSED -> closed with the drop's id and duration."""
    start = await now_cursor(aengine)
    conn = await connect(db_url)
    try:
        drop = await write(conn, sizes=(2, 4))
        await conn.commit()
        grew = await write(conn, "SIZE_OPEN", sizes=(6,), drop=drop)
        await conn.commit()
        shrank = await write(conn, "SIZE_CLOSE", sizes=(2,), drop=drop)
        await conn.commit()
        gone = await write(conn, "CLOSED", sizes=(4,), drop=drop)
        baseline = await write(conn, "SIZE_OPEN", sizes=(8,), drop=None)  # not a drop
        await conn.commit()
    finally:
        await conn.close()
    seen, _ = await drain(aengine, start, 10)
    assert [(c.kind, c.change_id, c.event_id) for c in seen] == [
        (OPENED, drop, drop),
        (SIZES, grew, drop),
        (SIZES, shrank, drop),
        (CLOSED, gone, drop),
    ]
    assert baseline not in {c.change_id for c in seen}
    assert seen[1].added == (6,) and seen[1].party_sizes == (2, 4, 6)
    assert seen[2].removed == (2,) and seen[2].party_sizes == (4,)
    assert seen[3].open_seconds == 30.0 and seen[3].party_sizes == (4,)
    assert all(c.opened_at == seen[0].opened_at for c in seen)


async def test_limit_truncates_and_the_next_page_continues(
    db_url: str, aengine: AsyncEngine
) -> None:
    start = await now_cursor(aengine)
    conn = await connect(db_url)
    try:
        ids = [await write(conn) for _ in range(7)]
        await conn.commit()
    finally:
        await conn.close()
    async with aengine.connect() as c:
        page = await store.read_changes(c, start, 5)
    assert page.truncated and [x.change_id for x in page.changes] == ids[:5]
    async with aengine.connect() as c:
        rest = await store.read_changes(c, page.next, 5)
    assert not rest.truncated and [x.change_id for x in rest.changes] == ids[5:]
    # Not truncated: the cursor moved on to the horizon, past the last change.
    assert rest.next.position_xact > rest.changes[-1].xact
