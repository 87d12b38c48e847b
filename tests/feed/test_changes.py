"""Change reads in commit order (services/feed/changes.py, store.read_changes) on real
PostgreSQL: writers that commit out of id order are never skipped, the initial state and the
live changes after it have no gap and no duplicate, expired cursors are OUT_OF_RANGE."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.feed import sql, store
from services.feed.changes import (
    CLOSED,
    OPENED,
    SIZES,
    OutOfRangeError,
    filter_query,
    matches,
)
from services.feed.cursor import Cursor, filter_key
from shared.db.engine import make_async_engine
from shared.db.partitions import ensure_partitions
from shared.gen.dropwatch.feed.v1 import feed_pb2
from tests.feed.changelog import CODEC, drain, held_poll, now_cursor, write
from tests.feed.conftest import NOW, TODAY, feed_settings
from tests.maintenance.helpers import insert_events, run_at
from tests.maintenance.test_run import NOW as MAINTENANCE_NOW
from tests.maintenance.test_run import PAST, msettings, sample_events
from tests.seeding import Seeder, SeedSlot


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
    # A closing shows the drop as it opened, and takes away what it still had.
    assert seen[3].open_seconds == 30.0 and seen[3].party_sizes == (2, 4)
    assert seen[3].removed == (4,)
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
    # An exclusion with an empty in-progress list skips every transaction below its bound.
    skip_all = Cursor(start.position_xact, 0, rest.next.position_xact, frozenset(), b"")
    async with aengine.connect() as c:
        assert (await store.read_changes(c, skip_all, 5)).changes == []
    x = page.changes[0]
    keep_one = Cursor(start.position_xact, 0, rest.next.position_xact, frozenset({x.xact}), b"")
    async with aengine.connect() as c:
        kept = await store.read_changes(c, keep_one, 10)
    assert [y.change_id for y in kept.changes] == ids  # one transaction wrote them all


async def test_initial_state_then_live_changes_have_no_gap_and_no_duplicate(
    seeder: Seeder, aengine: AsyncEngine
) -> None:
    """Z committed before the snapshot; T1 (X) in flight during it; T2 (Y) began after T1 and
    committed before it (its xact id is between the snapshot's xmin and xmax, so only the
    exclusion keeps it from coming twice); T3 (closing Y) after it. The state holds Z and Y;
    the changes after its cursor are X's opening and Y's closing, nothing else."""
    z = SeedSlot(11, TODAY, "19:00")
    x = SeedSlot(12, TODAY, "15:00")
    y = SeedSlot(13, TODAY + dt.timedelta(days=1), "19:00")
    await seeder.open([z], NOW)
    async with aengine.connect() as t1:
        await t1.begin()
        await held_poll(seeder, t1, [x], NOW)
        await seeder.open([y], NOW)
        async with aengine.connect() as reader:
            state = await store.read_initial_state(reader, None, TODAY)
            await reader.rollback()
        assert {c.slot_id for c in state.drops} == {z.slot_id, y.slot_id}
        assert state.cursor.skip_below is not None
        assert all(c.kind == OPENED for c in state.drops)
        await t1.commit()
    await seeder.close([y], NOW + dt.timedelta(minutes=1))
    token = CODEC.encode(state.cursor)
    seen, _ = await drain(aengine, CODEC.decode(token, filter_key(None)), 2)
    assert [(c.kind, c.slot_id) for c in seen] == [(OPENED, x.slot_id), (CLOSED, y.slot_id)]
    # Without the exclusion Y's opening would come again: the exclusion is what holds.
    bare = Cursor(state.cursor.position_xact, 0, filter_key=filter_key(None))
    twice, _ = await drain(aengine, bare, 10)
    assert (OPENED, y.slot_id) in [(c.kind, c.slot_id) for c in twice]


async def test_initial_state_is_filtered_and_cut_at_today(
    seeder: Seeder, aengine: AsyncEngine
) -> None:
    await seeder.open([SeedSlot(21, TODAY, "19:00", (2,)), SeedSlot(22, TODAY, "19:00", (6,))], NOW)
    query = filter_query(feed_pb2.FeedFilter(party_sizes=[6]))
    async with aengine.connect() as reader:
        state = await store.read_initial_state(reader, query, TODAY)
        await reader.rollback()
    assert [c.venue_id for c in state.drops] == [22]
    assert state.cursor.filter_key == filter_key(query)
    async with aengine.connect() as reader:
        later = await store.read_initial_state(reader, None, TODAY + dt.timedelta(days=1))
        await reader.rollback()
    assert later.drops == []


async def test_a_cursor_older_than_a_pruned_day_is_out_of_range(
    db_url: str, engine: Engine
) -> None:
    """The real maintenance run drops the past days and records the highest xact id it
    removed; a cursor from before is OUT_OF_RANGE naming it, a current one reads on."""
    aengine = make_async_engine(feed_settings(db_url), name="changes", url=db_url)
    try:
        old = await now_cursor(aengine)
        events = sample_events()
        insert_events(engine, events[: len(events) // 2])  # past days first...
        insert_events(engine, events[len(events) // 2 :])  # ...then the live ones
        seen, current = await drain(aengine, old, 500)
        # (these CLOSED events name no drop: not changes of the feed)
        assert len(seen) == sum(1 for e in events if e.event_type == "NEW_DROP")
        summary = run_at(msettings(db_url), engine, MAINTENANCE_NOW)
        assert summary.steps["prune_events"].detail["partitions"] == 3
        with engine.connect() as conn:
            floor = conn.execute(
                text("SELECT CAST(pruned_through AS text), pruned_day FROM change_floor")
            ).one()
        past = [c for c in seen if c.slot_date in PAST]
        assert int(floor[0]) == max(c.xact for c in past) and floor[1] == max(PAST)
        with pytest.raises(OutOfRangeError) as err:
            await drain(aengine, old, 500)
        assert err.value.field == "cursor" and f"after transaction {floor[0]}" in str(err.value)
        async with aengine.connect() as conn:
            with pytest.raises(OutOfRangeError):
                await store.check_retained(conn, old)
            await store.check_retained(conn, current)
        assert (await drain(aengine, current, 500))[0] == []
    finally:
        await aengine.dispose()


# ---- Property: `matches` (Python) keeps exactly what the SQL filter keeps ----

DAYS = tuple(TODAY + dt.timedelta(days=n) for n in range(3))
STARTS = ("13:00", "15:00", "18:45", "19:00", "19:30", "21:00")
SIZE_SETS = ((2,), (4,), (6,), (2, 4), (2, 6), (4, 6), (2, 4, 6))


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, SeedSlot]]:
    """Opens, resizes and closes of a few slots, in order (each one poll)."""
    ops = []
    for _ in range(draw(st.integers(1, 10))):
        slot = SeedSlot(
            draw(st.integers(1, 4)),
            draw(st.sampled_from(DAYS)),
            draw(st.sampled_from(STARTS)),
            draw(st.sampled_from(SIZE_SETS)),
        )
        ops.append((draw(st.sampled_from(("open", "open", "close"))), slot))
    return ops


@st.composite
def filters(draw: st.DrawFn) -> feed_pb2.FeedFilter:
    days = (*DAYS, TODAY - dt.timedelta(days=1))
    times = ("", "00:00", "15:00", "18:59", "19:00", "19:30", "23:59")
    time_from, time_to = draw(st.sampled_from(times)), draw(st.sampled_from(times))
    if time_from and time_to and time_from > time_to:
        time_from, time_to = time_to, time_from
    return feed_pb2.FeedFilter(
        reservation_dates=[d.isoformat() for d in draw(st.sets(st.sampled_from(days)))],
        party_sizes=draw(st.sets(st.sampled_from((2, 4, 6, 8)), max_size=2)),
        time_from=time_from,
        time_to=time_to,
        time_slots=draw(st.sets(st.sampled_from(("15:00", "19:00")))),
        venue_ids=draw(st.sets(st.integers(1, 5), max_size=3)),
    )


@settings(
    max_examples=30,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories(), asks=st.lists(filters(), min_size=1, max_size=5))
async def test_matches_agrees_with_the_sql_filter(
    seeder: Seeder,
    aengine: AsyncEngine,
    history: list[tuple[str, SeedSlot]],
    asks: list[feed_pb2.FeedFilter],
) -> None:
    start = await now_cursor(aengine)
    sizes_now: dict[str, tuple[int, ...]] = {}
    for n, (op, slot) in enumerate(history):
        at = NOW + dt.timedelta(seconds=n)
        if op == "open":
            await seeder.open([slot], at)
            sizes_now[slot.slot_id] = slot.party_sizes
        else:
            await seeder.close([slot], at)
            sizes_now.pop(slot.slot_id, None)
    every, _ = await drain(aengine, start, 7)
    for f in asks:
        query = filter_query(f)
        got, _ = await drain(aengine, start, 3, query)
        assert [c.change_id for c in got] == [c.change_id for c in every if matches(query, c)], f
    # A slot's last change, if a resize, carries its sizes after it (the exact path).
    last = {c.slot_id: c for c in every}
    for slot_id, change in last.items():
        if change.kind == SIZES and slot_id in sizes_now:
            assert change.party_sizes == sizes_now[slot_id]


# ---- Plan: the read is one index range scan per day partition, whatever the history ----

BULK = """
INSERT INTO drop_events (bucket_date, bucket_id, market, provider, slot_id, venue_id,
    event_type, opened_at, slot_date, slot_time, seating_type, party_sizes, time_slot,
    time_bucket, dedupe_key)
SELECT d, d || '_19:00', 'nyc', 'resy', 's' || :t || '_' || g, 1 + g % 50, 'NEW_DROP', now(),
    d, time '19:00', 'Dining Room', '{2,4}', '19:00', 'prime', 'k' || :t || '_' || g
FROM generate_series(1, :n) AS g,
     LATERAL (SELECT CAST(:first AS date) + (:t + g) % 10 AS d) AS x
"""


def test_an_unfiltered_read_walks_the_index_not_the_history(engine: Engine) -> None:
    first = dt.date(2026, 12, 1)
    with engine.begin() as conn:
        ensure_partitions(conn, [first + dt.timedelta(days=n) for n in range(10)])
    for t in range(100):  # 100 transactions of 200 events
        with engine.begin() as conn:
            conn.execute(text(BULK), {"t": t, "n": 200, "first": first})
    with engine.begin() as conn:
        conn.execute(text("ANALYZE drop_events"))
        low, high = conn.execute(
            text("SELECT CAST(min(xact_id) AS text), CAST(max(xact_id) AS text) FROM drop_events")
        ).one()
        conn.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))  # as the feed
        for after in (low, str(int(high) - 5), str(int(high) + 1)):
            values = {"after_xact": after, "after_id": 0, "horizon": str(int(high) + 1)}
            plan = conn.execute(
                text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql.build_changes_sql(None, False)),
                {**values, "fetch": 101},
            ).scalar_one()[0]["Plan"]
            nodes = list(_walk(plan))
            scans = [n for n in nodes if re.fullmatch(r"e(_[0-9]+)?", n.get("Alias", ""))]
            assert scans and all(
                n["Node Type"] == "Index Scan" and n["Index Name"].endswith("xact_id_id_idx")
                for n in scans
            ), nodes
            # Merged in order from the indexes: no sort of the history.
            spine = [plan]
            while spine[-1]["Node Type"] != "Merge Append":
                spine.append(spine[-1]["Plans"][0])
            assert "Sort" not in [n["Node Type"] for n in spine], spine
            # Rows read from the events: about the page, not the 20,000 events.
            assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= 101 + 10


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)
