"""A blocked request is never the truth: per-kind holds, lasting blocks, confirmed sell-outs.

Real poll code and PostgreSQL against the scripted provider (tests/poller/scripted.py).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, text

from services.poller.poll import PollContext
from tests.poller.conftest import Clock, poll_scripted
from tests.poller.helpers import TODAY, bucket_row, events
from tests.poller.scripted import ScriptedResy, slot_key

BUCKET = f"{TODAY.isoformat()}_19:00"
OTHER = f"{TODAY.isoformat()}_15:00"


def open_sizes(engine: Engine, bucket_id: str = BUCKET) -> dict[str, list[int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT slot_id, party_sizes FROM open_slots WHERE bucket_id = :b"),
            {"b": bucket_id},
        )
        return {r.slot_id: sorted(r.party_sizes) for r in rows}


def kinds(engine: Engine) -> list[tuple[str, str, list[int]]]:
    return [
        (e["event_type"], e["slot_id"], sorted(e["party_sizes"])) for e in events(engine, BUCKET)
    ]


async def baselined(ctx: PollContext, resy: ScriptedResy, clock: Clock) -> None:
    for _ in range(3):
        assert await poll_scripted(ctx, resy, BUCKET) == "healthy"
        clock.tick()


async def test_one_blocked_party_size_changes_nothing_it_reported(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(1, "19:00"): {2, 4}, (2, "19:30"): {4}, (3, "20:00"): {2, 4}}
    await baselined(sctx, resy, clock)
    resy.slots[(4, "20:15")] = {2, 4}
    assert await poll_scripted(sctx, resy, BUCKET) == "healthy"
    assert kinds(engine) == [("NEW_DROP", slot_key(4, "20:15"), [2, 4])]
    before = open_sizes(engine)

    resy.blocked = {4}  # party size 4 answers empty 200s, size 2 answers normally
    resy.slots[(5, "18:30")] = {2}  # a real opening seen by the healthy kind
    resy.slots[(3, "20:00")] = {4}  # the healthy kind no longer sees slot 3
    clock.tick()
    assert await poll_scripted(sctx, resy, BUCKET) == "partial_block"
    after = open_sizes(engine)
    # Nothing size 4 reported changed: slot 2 (open for 4 only) is still open, size 4 stays on
    # every slot; the healthy kind's changes apply (slot 5 opened, slot 3 lost size 2).
    assert after == {**before, slot_key(5, "18:30"): [2], slot_key(3, "20:00"): [4]}
    assert sorted(kinds(engine)[1:]) == [
        ("NEW_DROP", slot_key(5, "18:30"), [2]),
        ("SIZE_CLOSE", slot_key(3, "20:00"), [2]),
    ]
    assert bucket_row(engine, BUCKET)["held"].keys() == {"4"}
    assert sctx.metrics.held_kinds.labels(BUCKET)._value.get() == 1

    resy.blocked = set()  # the block lifts: nothing "opens again"
    clock.tick()
    count = len(events(engine, BUCKET))
    assert await poll_scripted(sctx, resy, BUCKET) == "healthy"
    assert len(events(engine, BUCKET)) == count
    assert bucket_row(engine, BUCKET)["held"] == {}


async def test_repeated_empty_answers_close_nothing(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(1, "19:00"): {2, 4}, (2, "19:30"): {2}}
    await baselined(sctx, resy, clock)
    resy.slots[(3, "20:00")] = {2, 4}
    assert await poll_scripted(sctx, resy, BUCKET) == "healthy"
    before = open_sizes(engine)
    resy.all_empty = True
    for _ in range(6):  # well past the old "second empty answer confirms" rule
        clock.tick(600)
        assert await poll_scripted(sctx, resy, BUCKET) == "blocked"
    assert [k for k, _, _ in kinds(engine)] == ["NEW_DROP"]
    assert open_sizes(engine) == before
    row = bucket_row(engine, BUCKET)
    assert row["held"]["2"]["polls"] == 6 and row["last_outcome"] == "blocked"
    resy.all_empty = False
    assert await poll_scripted(sctx, resy, BUCKET) == "healthy"
    assert [k for k, _, _ in kinds(engine)] == ["NEW_DROP"]


async def test_failed_polls_in_between_neither_reset_nor_confirm_a_hold(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(v, "19:00"): {2} for v in range(1, 13)}
    await baselined(sctx, resy, clock)
    resy.all_empty = True
    first = clock.tick()
    assert await poll_scripted(sctx, resy, BUCKET) == "blocked"
    for fault in ("server_error", "timeout", "bad_time"):
        clock.tick()
        resy.fault = fault
        assert await poll_scripted(sctx, resy, BUCKET) != "blocked"
    clock.tick()
    assert await poll_scripted(sctx, resy, BUCKET) == "blocked"
    hold = bucket_row(engine, BUCKET)["held"]["2"]
    assert (hold["polls"], dt.datetime.fromisoformat(hold["since"])) == (2, first)

    # A sharp shrink, an error, the same shrink: confirmed (the error did not reset it).
    resy.all_empty = False
    clock.tick()
    assert await poll_scripted(sctx, resy, BUCKET) == "healthy"
    resy.slots = {(1, "19:00"): {2}}
    clock.tick()
    assert await poll_scripted(sctx, resy, BUCKET) == "suspect_soft_block"
    resy.fault = "server_error"
    assert await poll_scripted(sctx, resy, BUCKET) == "server_error"
    assert await poll_scripted(sctx, resy, BUCKET) == "confirmed_shrink"


async def test_a_sell_out_is_confirmed_by_time_polls_and_the_market(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(1, "19:00"): {2}}
    await baselined(sctx, resy, clock)
    resy.slots[(2, "19:30")] = {2}
    opened = clock.tick()
    await poll_scripted(sctx, resy, BUCKET)
    resy.slots = {}  # really sold out
    gone = clock.tick()
    for _ in range(4):
        assert await poll_scripted(sctx, resy, BUCKET) == "blocked"
        clock.tick(900)  # an hour of empty answers, but no evidence from the market yet
    resy.slots = {(7, "15:00"): {2}}  # another bucket of the market answers non-empty
    assert await poll_scripted(sctx, resy, OTHER) == "healthy"
    assert bucket_row(engine, OTHER)["held"] == {}
    resy.slots = {}
    clock.tick()
    assert await poll_scripted(sctx, resy, BUCKET) == "confirmed_sellout"
    closed = [e for e in events(engine, BUCKET) if e["event_type"] == "CLOSED"]
    # Closed when first seen gone (the first empty answer), not when confirmed.
    assert [(c["slot_id"], c["closed_at"]) for c in closed] == [(slot_key(2, "19:30"), gone)]
    assert closed[0]["drop_duration_seconds"] == (gone - opened).total_seconds()
    assert open_sizes(engine) == {}


async def test_closed_at_of_a_confirmed_shrink_is_the_suspect_poll(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(v, "19:00"): {2} for v in range(1, 13)}
    await baselined(sctx, resy, clock)
    resy.slots[(20, "20:00")] = {2}
    clock.tick()
    await poll_scripted(sctx, resy, BUCKET)
    resy.slots = {(1, "19:00"): {2}}
    suspect = clock.tick()
    assert await poll_scripted(sctx, resy, BUCKET) == "suspect_soft_block"
    clock.tick(30)
    assert await poll_scripted(sctx, resy, BUCKET) == "confirmed_shrink"
    closed = [e for e in events(engine, BUCKET) if e["event_type"] == "CLOSED"]
    assert [c["closed_at"] for c in closed] == [suspect]


async def test_a_kind_blocked_while_its_bucket_baselined_reports_no_false_drops(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    """Found writing the hunt's model: the baseline was the bucket's, so what only a blocked kind
    could see was missing from it and became drops (and sizes) when the block lifted."""
    resy.slots = {(1, "19:00"): {2, 4}, (2, "19:30"): {4}}
    resy.blocked = {4}  # blocked from the bucket's first poll on
    await baselined(sctx, resy, clock)
    resy.blocked = set()
    for _ in range(3):  # size 4 builds its own baseline: nothing it shows is news yet
        assert await poll_scripted(sctx, resy, BUCKET) == "healthy"
        clock.tick()
    assert kinds(engine) == []
    assert open_sizes(engine) == {slot_key(1, "19:00"): [2, 4], slot_key(2, "19:30"): [4]}
    resy.slots[(3, "20:00")] = {4}  # now a real drop for size 4
    assert await poll_scripted(sctx, resy, BUCKET) == "healthy"
    assert kinds(engine) == [("NEW_DROP", slot_key(3, "20:00"), [4])]


async def test_a_missing_page_fails_the_fetch_and_a_repeated_venue_is_one_venue(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    """The page faults the hunt serves do what they say (per_page 100 -> 2 here)."""
    object.__setattr__(sctx.settings, "per_page", 2)
    resy.slots = {(v, "19:00"): {2, 4} for v in range(1, 6)}  # 3 pages per party size
    await baselined(sctx, resy, clock)
    before = open_sizes(engine)
    resy.slots.pop((1, "19:00"))
    resy.fault = "missing_page"
    assert await poll_scripted(sctx, resy, BUCKET) == "incomplete"
    assert resy.fired and kinds(engine) == [] and open_sizes(engine) == before
    resy.fault, resy.fired = "repeat_venue", False
    assert await poll_scripted(sctx, resy, BUCKET) == "healthy"
    assert not resy.fired and [k for k, _, _ in kinds(engine)] == []
    assert len(open_sizes(engine)) == 4
