"""The write statement's plan when open_slots' statistics are stale.

A bucket that gets its open state after the last ANALYZE (a new day's buckets, a freshly seeded
database) is estimated at one row. The write's DELETE and UPDATE of open_slots must then still
look up the changed slots by primary key: scanning the bucket against the per-slot diff is a
quadratic nested loop (0.7 s per poll at 2000 open slots, see docs/performance.md, poll_write).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.poller import store
from services.poller.slots import BucketFetch, Slot, VenueInfo
from shared.db.buckets import ensure_live_buckets
from shared.db.engine import make_async_engine
from shared.slots import slot_id_for
from tests.poller.helpers import TODAY, poller_settings

STALE = f"{TODAY.isoformat()}_19:00"  # gets its open state after ANALYZE
KNOWN = f"{TODAY.isoformat()}_15:00"  # the only bucket ANALYZE saw
N, K = 300, 10


def _fetch(indices: range | list[int]) -> BucketFetch:
    fetch = BucketFetch()
    for i in indices:
        venue = 1000 + i // 4
        start = dt.datetime.combine(TODAY, dt.time(19, 0)) + dt.timedelta(minutes=15 * (i % 4))
        fetch.venues[venue] = VenueInfo(venue, f"V{venue}", "SoHo", 2, f"v{venue}", "ny")
        fetch.add(Slot(slot_id_for("resy", venue, start, f"T{i}"), venue, start, f"T{i}"), 2)
    return fetch


async def _poll(aengine: AsyncEngine, bucket: str, fetch: BucketFetch) -> None:
    now = dt.datetime.now(dt.UTC)
    async with aengine.begin() as conn:
        leased = await store.lease_one(conn, owner="o", bucket_id=bucket, lease_seconds=30)
    assert leased is not None
    async with aengine.begin() as conn:
        await store.upsert_venues(conn, fetch, "resy")
        await store.write_healthy_poll(
            conn, leased, fetch, market="nyc", provider="resy", prime=True,
            outcome="healthy", now=now, next_poll_at=now,
        )  # fmt: skip


def _nodes(node: dict[str, Any], under: str | None = None) -> Iterator[tuple[str | None, Any]]:
    """Every plan node with the operation of the ModifyTable it runs under."""
    op = node.get("Operation", under) if node["Node Type"] == "ModifyTable" else under
    yield op, node
    for child in node.get("Plans", []):
        yield from _nodes(child, op)


async def test_write_looks_up_changed_slots_by_key_on_stale_statistics(
    db_url: str, engine: Engine
) -> None:
    with engine.begin() as conn:
        ensure_live_buckets(
            conn, market="nyc", today=TODAY, window_days=1, anchors=("15:00", "19:00")
        )
        conn.execute(text("UPDATE discovery_buckets SET baseline_polls = 3"))
        conn.execute(text("ALTER TABLE open_slots SET (autovacuum_enabled = off)"))
    aengine = make_async_engine(poller_settings(db_url), name="t", url=db_url)
    try:
        await _poll(aengine, KNOWN, _fetch(range(N)))
        with engine.begin() as conn:
            conn.execute(text("ANALYZE open_slots"))
        await _poll(aengine, STALE, _fetch(range(N)))
        seen: list[tuple[str, Any]] = []

        def capture(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
            if statement.lstrip().startswith("WITH cur AS"):
                seen.append((statement, parameters))

        event.listen(aengine.sync_engine, "before_cursor_execute", capture)
        await _poll(aengine, STALE, _fetch([*range(K, N), *range(N, N + K)]))  # K gone, K new
        event.remove(aengine.sync_engine, "before_cursor_execute", capture)
        (statement, parameters), = seen  # fmt: skip
        async with aengine.connect() as aconn:
            explain = "EXPLAIN (FORMAT JSON) " + statement
            (plan,) = (await aconn.exec_driver_sql(explain, parameters)).one()
    finally:
        await aengine.dispose()
    with engine.connect() as conn:
        estimate = conn.execute(
            text("EXPLAIN (FORMAT JSON) SELECT * FROM open_slots WHERE bucket_id = :b"),
            {"b": STALE},
        ).scalar_one()
    root = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    assert _plan_rows(estimate) < N / 10  # the statistics are stale, as the test needs
    scans = [
        (op, n)
        for op, n in _nodes(root)
        if op in ("Delete", "Update") and n.get("Relation Name") == "open_slots"
        and n["Node Type"] != "ModifyTable"
    ]  # fmt: skip
    assert {op for op, _ in scans} == {"Delete", "Update"}, scans
    # A gone slot leaves the baseline by key too (baseline_slots is as large as the baselines).
    scans += [
        (op, n)
        for op, n in _nodes(root)
        if op == "Delete" and n.get("Relation Name") == "baseline_slots"
        and n["Node Type"] != "ModifyTable"
    ]  # fmt: skip
    assert any(n.get("Relation Name") == "baseline_slots" for _, n in scans), scans
    for op, scan in scans:
        assert "Index" in scan["Node Type"] and "slot_id" in scan.get("Index Cond", ""), (op, scan)


def _plan_rows(plan: Any) -> float:
    return float((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]["Plan Rows"])
