"""The one-transaction write of a healthy poll, straight against the store (no HTTP)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.poller import store
from services.poller.slots import BucketFetch, Slot, VenueInfo
from shared.db.buckets import ensure_live_buckets
from shared.db.engine import make_async_engine
from shared.slots import slot_id_for
from tests.poller.helpers import TODAY, events, open_slot_ids, poller_settings

BUCKET = f"{TODAY.isoformat()}_19:00"
OWNER = "test-owner"


def _fetch(n: int, offset: int = 0) -> BucketFetch:
    fetch = BucketFetch()
    for i in range(offset, offset + n):
        venue = 1000 + i // 4
        start = dt.datetime.combine(TODAY, dt.time(17, 0)) + dt.timedelta(minutes=15 * (i % 4))
        seating = f"Table {i}"
        fetch.venues[venue] = VenueInfo(venue, f"V{venue}", "SoHo", 2, f"v{venue}", "ny")
        fetch.add(Slot(slot_id_for("resy", venue, start, seating), venue, start, seating), 2)
    return fetch


@pytest.fixture
async def aengine(db_url: str, engine: Engine) -> AsyncIterator[AsyncEngine]:
    with engine.begin() as conn:
        ensure_live_buckets(
            conn, market="nyc", today=TODAY, window_days=1, anchors=("15:00", "19:00")
        )
        # Skip baselining: these tests are about the diff.
        conn.execute(text("UPDATE discovery_buckets SET baseline_polls = 3"))
    aengine = make_async_engine(poller_settings(db_url), name="t", url=db_url)
    yield aengine
    await aengine.dispose()  # not left to the garbage collector: its warning fails a test


async def _poll(
    aengine: AsyncEngine, fetch: BucketFetch, now: dt.datetime, fetch_seconds: float = 0.0
) -> store.WriteResult:
    async with aengine.begin() as conn:
        leased = await store.lease_one(conn, owner=OWNER, bucket_id=BUCKET, lease_seconds=30)
    assert leased is not None
    async with aengine.begin() as conn:
        await store.check_lease(conn, leased, OWNER)
        await store.upsert_venues(conn, fetch, "resy")
        return await store.write_healthy_poll(
            conn,
            leased,
            fetch,
            market="nyc",
            provider="resy",
            prime=True,
            outcome="healthy",
            now=now,
            next_poll_at=now + dt.timedelta(seconds=30),
            fetch_seconds=fetch_seconds,
        )


def _count_statements(aengine: AsyncEngine) -> list[str]:
    seen: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(aengine.sync_engine, "before_cursor_execute", before)
    return seen


@pytest.mark.parametrize("k", [0, 10, 1000])
async def test_statement_count_is_constant(aengine: AsyncEngine, engine: Engine, k: int) -> None:
    t0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    base = _fetch(1000)
    await _poll(aengine, base, t0)
    # Next poll: k slots closed, k new ones opened.
    nxt = _fetch(1000 - k, offset=k)
    for slot in _fetch(k, offset=5000).slots.values():
        nxt.add(slot, 2)
    seen = _count_statements(aengine)
    result = await _poll(aengine, nxt, t0 + dt.timedelta(minutes=1))
    await aengine.dispose()
    assert (result.new_drops, result.closed) == (k, k)
    # lease + version check + venues + the write = 4 statements, whatever k is.
    assert len(seen) == 4, seen


async def test_new_drops_then_closed_with_duration(aengine: AsyncEngine, engine: Engine) -> None:
    t0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    await _poll(aengine, _fetch(3), t0)
    result = await _poll(aengine, _fetch(5), t0 + dt.timedelta(seconds=30))
    assert (result.new_drops, result.closed) == (2, 0)
    result = await _poll(aengine, _fetch(3), t0 + dt.timedelta(seconds=90))
    assert (result.new_drops, result.closed) == (0, 2)
    await aengine.dispose()
    rows = events(engine, BUCKET)
    drops = [r for r in rows if r["event_type"] == "NEW_DROP"]
    closes = [r for r in rows if r["event_type"] == "CLOSED"]
    assert len(drops) == 5 and len(closes) == 2  # the first poll's 3 slots were drops too
    assert {c["drop_event_id"] for c in closes} == {d["id"] for d in drops[3:]}
    assert all(c["drop_duration_seconds"] == 60.0 for c in closes)
    assert all(d["time_bucket"] == "prime" for d in drops)
    assert open_slot_ids(engine, BUCKET) == set(_fetch(3).slots)


async def test_rewriting_the_same_answer_writes_nothing(
    aengine: AsyncEngine, engine: Engine
) -> None:
    t0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    await _poll(aengine, _fetch(2), t0)
    await _poll(aengine, _fetch(4), t0 + dt.timedelta(seconds=30))
    before = events(engine)
    result = await _poll(aengine, _fetch(4), t0 + dt.timedelta(seconds=60))
    await aengine.dispose()
    assert (result.new_drops, result.closed) == (0, 0)
    assert events(engine) == before


async def test_stale_version_is_detected_not_merged(aengine: AsyncEngine, engine: Engine) -> None:
    async with aengine.begin() as conn:
        leased = await store.lease_one(conn, owner=OWNER, bucket_id=BUCKET, lease_seconds=30)
    assert leased is not None
    await _poll(aengine, _fetch(2), dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC))
    with pytest.raises(store.LeaseLostError):
        async with aengine.begin() as conn:
            await store.check_lease(conn, leased, OWNER)
    await aengine.dispose()


async def test_unchanged_venues_are_not_locked(aengine: AsyncEngine) -> None:
    """Polls of different buckets share venues; an unchanged venue must not block them."""
    fetch = _fetch(8)
    async with aengine.begin() as conn:
        await store.upsert_venues(conn, fetch, "resy")
    async with aengine.connect() as first, aengine.connect() as second:
        await first.begin()
        await store.upsert_venues(first, fetch, "resy")  # still open: holds its locks
        await second.begin()
        await second.execute(text("SET LOCAL lock_timeout = '300ms'"))
        await store.upsert_venues(second, fetch, "resy")  # would time out if locked
        await second.commit()
        await first.commit()
    await aengine.dispose()


@pytest.mark.parametrize("fetch_seconds", [2.0, 45.0, 1e9])
async def test_a_poll_is_dated_from_its_fetch_start_and_never_comes_due_overdue(
    aengine: AsyncEngine, engine: Engine, fetch_seconds: float
) -> None:
    """The bucket's last poll is when its fetch began (intervals run start to start); a fetch
    that took longer than the 30 s wait (retries, a 429's Retry-After) is dated at most one wait
    back, so its bucket is due at once at the most, never overdue ahead of the others."""
    with engine.connect() as conn:
        before = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    await _poll(aengine, _fetch(2), dt.datetime.now(dt.UTC), fetch_seconds)
    with engine.connect() as conn:
        after = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        row = conn.execute(
            text("SELECT last_polled_at, next_poll_at FROM discovery_buckets WHERE bucket_id = :b"),
            {"b": BUCKET},
        ).one()
    back = dt.timedelta(seconds=min(fetch_seconds, 30.0))
    assert before - back <= row.last_polled_at <= after - back
    assert row.next_poll_at - row.last_polled_at == dt.timedelta(seconds=30)
    assert row.next_poll_at >= before
