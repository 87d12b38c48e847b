"""Party sizes open and close too; start times in every ISO form; an unreadable one fails all.

Real poll code and PostgreSQL against the scripted provider (tests/poller/scripted.py).
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from sqlalchemy import Engine, text

from services.feed import sql as feed_sql
from services.feed.paging import Boundary
from services.feed.request import from_just_opened, from_still_open
from services.poller.poll import PollContext
from services.poller.slots import parse_local_start
from shared.db.contracts import FEED_CHANNEL
from shared.db.urls import libpq_url
from shared.gen.dropwatch.feed.v1 import feed_pb2
from tests.poller.conftest import Clock, poll_scripted
from tests.poller.helpers import TODAY, events
from tests.poller.scripted import FORMATS, ZONE, ScriptedResy, slot_key

BUCKET = f"{TODAY.isoformat()}_19:00"


def sized(engine: Engine) -> list[tuple[str, str, list[int]]]:
    return [
        (e["event_type"], e["slot_id"], sorted(e["party_sizes"])) for e in events(engine, BUCKET)
    ]


def open_row(engine: Engine, slot_id: str) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM open_slots WHERE bucket_id = :b AND slot_id = :s"),
            {"b": BUCKET, "s": slot_id},
        ).one()
        return dict(row._mapping)


async def baselined(ctx: PollContext, resy: ScriptedResy, clock: Clock) -> None:
    for _ in range(3):
        assert await poll_scripted(ctx, resy, BUCKET) == "healthy"
        clock.tick()


async def test_a_party_size_that_opens_or_closes_is_an_event_and_wakes_the_feed(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock, db_url: str
) -> None:
    resy.slots = {(1, "19:00"): {2, 4}}  # size 4 answers non-empty throughout
    await baselined(sctx, resy, clock)
    x = slot_key(2, "19:30")
    resy.slots[(2, "19:30")] = {2}
    opened = clock.tick()
    await poll_scripted(sctx, resy, BUCKET)
    listener = psycopg.connect(libpq_url(db_url), autocommit=True)
    try:
        listener.execute(f"LISTEN {FEED_CHANNEL}")
        resy.slots[(2, "19:30")] = {2, 4}  # now bookable for 4 too: for 4, a table just opened
        grown = clock.tick()
        assert await poll_scripted(sctx, resy, BUCKET) == "healthy"
        woke = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    finally:
        listener.close()
    assert woke == [BUCKET]
    assert sized(engine)[-1] == ("SIZE_OPEN", x, [4])
    row = open_row(engine, x)
    assert row["party_sizes"] == [2, 4] and row["opened_at"] == opened
    assert row["size_opened_at"] == [None, grown]

    resy.slots[(2, "19:30")] = {2}
    shrunk = clock.tick()
    await poll_scripted(sctx, resy, BUCKET)
    closing = events(engine, BUCKET)[-1]
    assert (closing["event_type"], closing["party_sizes"]) == ("SIZE_CLOSE", [4])
    assert closing["closed_at"] == shrunk and closing["drop_event_id"] == row["drop_event_id"]
    assert open_row(engine, x)["party_sizes"] == [2]
    # The same answer again writes nothing more.
    before = len(events(engine, BUCKET))
    await poll_scripted(sctx, resy, BUCKET)
    assert len(events(engine, BUCKET)) == before


@pytest.mark.parametrize(
    ("raw", "local"),
    [
        ("2026-12-08T19:00:00.000", "2026-12-08T19:00"),
        ("2026-12-08T19:00:59.999999", "2026-12-08T19:00"),
        ("2026-12-08T19:00:00-05:00", "2026-12-08T19:00"),
        ("2026-12-09T00:00:00Z", "2026-12-08T19:00"),
        ("2026-12-08T16:00:00-08:00", "2026-12-08T19:00"),
        ("2026-12-08 19:00", "2026-12-08T19:00"),
    ],
)
def test_start_times_with_fractions_or_offsets_are_market_local(raw: str, local: str) -> None:
    assert parse_local_start(raw, ZONE) == dt.datetime.fromisoformat(local)


@pytest.mark.parametrize("raw", ["tomorrow at 7", "2026-12-08", "2026-12-08T25:00", ""])
def test_unreadable_start_times_are_rejected(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_local_start(raw, ZONE)


async def test_every_time_format_is_the_same_slot(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(1, "19:00"): {2, 4}, (2, "20:45"): {2}}
    await baselined(sctx, resy, clock)
    for fmt in FORMATS:
        resy.time_format = fmt
        clock.tick()
        assert await poll_scripted(sctx, resy, BUCKET) == "healthy"
    assert events(engine, BUCKET) == []


async def test_one_unreadable_start_time_fails_the_whole_fetch(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(1, "19:00"): {2}, (2, "19:30"): {2}}
    await baselined(sctx, resy, clock)
    resy.slots = {(3, "20:00"): {2}}  # a partial diff would close 1 and 2 and open 3
    resy.fault = "bad_time"
    assert await poll_scripted(sctx, resy, BUCKET) == "unparseable_start"
    assert events(engine, BUCKET) == []
    assert sctx.metrics.fetch_outcomes.labels("unparseable_start")._value.get() == 1


def feed_slots(
    engine: Engine,
    request: feed_pb2.JustOpenedRequest | feed_pb2.StillOpenRequest,
    at: dt.datetime,
) -> set[str]:
    """Slot ids the feed's list query returns for `request` at boundary `at`."""
    if isinstance(request, feed_pb2.JustOpenedRequest):
        query = from_just_opened(request)
    else:
        query = from_still_open(request)
    values = feed_sql.params(query, TODAY, Boundary(at, 2**62), None)
    with engine.connect() as conn:
        rows = conn.execute(text(feed_sql.build_sql(query, keyset=False)), values)
        return {r.slot_id for r in rows}


async def test_the_feed_shows_a_size_that_just_opened_to_that_size_only(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(1, "19:00"): {2, 4}}
    await baselined(sctx, resy, clock)
    x = slot_key(2, "19:30")
    resy.slots[(2, "19:30")] = {2}
    await poll_scripted(sctx, resy, BUCKET)
    clock.tick(3600)  # long open for parties of 2 ...
    resy.slots[(2, "19:30")] = {2, 4}  # ... and just now for parties of 4
    await poll_scripted(sctx, resy, BUCKET)
    at = clock.tick()
    age = 900

    def just(*sizes: int) -> set[str]:
        f = feed_pb2.FeedFilter(party_sizes=list(sizes))
        return feed_slots(engine, feed_pb2.JustOpenedRequest(filter=f, max_age_seconds=age), at)

    def still(*sizes: int) -> set[str]:
        f = feed_pb2.FeedFilter(party_sizes=list(sizes))
        return feed_slots(engine, feed_pb2.StillOpenRequest(filter=f, min_age_seconds=age), at)

    assert (x in just(4), x in still(4)) == (True, False)
    assert (x in just(2), x in still(2)) == (False, True)
    assert (x in just(2, 4), x in still(2, 4)) == (True, False)  # just opened for one of them
    assert (x in just(), x in still()) == (False, True)  # no size asked: the slot's own opening
