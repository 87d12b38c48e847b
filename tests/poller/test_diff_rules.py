"""One table, one drop, every time it opens: the baseline and bucket-share rules of the diff.

Real poll code and PostgreSQL against the scripted provider (tests/poller/scripted.py), which
answers every slot of the day to both buckets' searches, as Resy's anchor +/- 2 h searches do
for a 17:00 table with anchors 15:00 and 19:00. See docs/architecture.md, The poller.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, text

from services.poller.poll import PollContext
from services.poller.provider import BucketSpec
from shared.shares import Share, bucket_share, minute_of_day
from tests.poller.conftest import Clock, poll_scripted
from tests.poller.helpers import TODAY, events, open_slot_ids, poller_settings
from tests.poller.scripted import ScriptedResy, scripted_context, slot_key

EARLY = f"{TODAY.isoformat()}_15:00"
LATE = f"{TODAY.isoformat()}_19:00"
TWO_HOURS = dt.timedelta(hours=2)


def kinds(engine: Engine, bucket: str | None = None) -> list[tuple[str, str]]:
    return [(e["event_type"], e["slot_id"]) for e in events(engine, bucket)]


def baseline_ids(engine: Engine, bucket: str) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT slot_id FROM baseline_slots WHERE bucket_id = :b"), {"b": bucket}
        )
        return set(rows.scalars())


async def baselined(ctx: PollContext, resy: ScriptedResy, clock: Clock, *buckets: str) -> None:
    for _ in range(3):
        for bucket in buckets:
            assert await poll_scripted(ctx, resy, bucket) == "healthy"
        clock.tick()


async def test_a_baseline_slot_closed_then_reopened_is_a_drop(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(1, "19:00"): {2, 4}, (2, "19:30"): {2, 4}}
    await baselined(sctx, resy, clock, LATE)
    assert baseline_ids(engine, LATE) == {slot_key(1, "19:00"), slot_key(2, "19:30")}
    del resy.slots[(2, "19:30")]  # booked: a healthy poll shows it gone
    assert await poll_scripted(sctx, resy, LATE) == "healthy"
    assert kinds(engine) == []  # it never opened as a drop, so it does not close as one
    assert baseline_ids(engine, LATE) == {slot_key(1, "19:00")}
    resy.slots[(2, "19:30")] = {2, 4}  # a cancellation opens it again
    clock.tick()
    assert await poll_scripted(sctx, resy, LATE) == "healthy"
    assert kinds(engine) == [("NEW_DROP", slot_key(2, "19:30"))]
    assert sorted(events(engine)[0]["party_sizes"]) == [2, 4]
    del resy.slots[(2, "19:30")]  # ... and it closes like any drop
    clock.tick()
    assert await poll_scripted(sctx, resy, LATE) == "healthy"
    drop, closed = events(engine)
    assert (closed["event_type"], closed["drop_event_id"]) == ("CLOSED", drop["id"])


async def test_a_drop_closed_then_reopened_is_a_second_drop(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(1, "19:00"): {2}}
    await baselined(sctx, resy, clock, LATE)
    for _ in range(2):
        resy.slots[(3, "20:00")] = {2}
        assert await poll_scripted(sctx, resy, LATE) == "healthy"
        clock.tick()
        del resy.slots[(3, "20:00")]
        assert await poll_scripted(sctx, resy, LATE) == "healthy"
        clock.tick()
    rows = events(engine)
    assert [r["event_type"] for r in rows] == ["NEW_DROP", "CLOSED"] * 2
    first, second = rows[0], rows[2]
    assert first["id"] != second["id"] and first["dedupe_key"] != second["dedupe_key"]
    assert [r["drop_event_id"] for r in rows[1::2]] == [first["id"], second["id"]]
    assert rows[1]["closed_at"] <= second["opened_at"]


async def test_a_slot_on_the_boundary_of_two_windows_is_one_drop(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(1, "15:00"): {2}, (2, "19:00"): {2}}
    await baselined(sctx, resy, clock, EARLY, LATE)
    # 17:00 is in both searches (anchor +/- 2 h) and halfway: the later anchor's; 16:59 the
    # earlier's.
    resy.slots[(3, "17:00")] = {2}
    resy.slots[(4, "16:59")] = {2}
    for bucket in (EARLY, LATE):
        assert await poll_scripted(sctx, resy, bucket) == "healthy"
    assert kinds(engine, LATE) == [("NEW_DROP", slot_key(3, "17:00"))]
    assert kinds(engine, EARLY) == [("NEW_DROP", slot_key(4, "16:59"))]
    assert slot_key(3, "17:00") not in open_slot_ids(engine, EARLY)
    # The daily figures count events: one NEW_DROP per venue and opening.
    with engine.connect() as conn:
        per_venue = dict(
            conn.execute(
                text(
                    "SELECT venue_id, count(*) FROM drop_events "
                    "WHERE event_type = 'NEW_DROP' GROUP BY venue_id"
                )
            ).all()
        )
    assert per_venue == {3: 1, 4: 1}
    del resy.slots[(3, "17:00")]
    clock.tick()
    for bucket in (EARLY, LATE):
        assert await poll_scripted(sctx, resy, bucket) == "healthy"
    assert [k for k, _ in kinds(engine) if k == "CLOSED"] == ["CLOSED"]


async def test_a_baseline_slot_hidden_by_a_held_kind_stays_in_the_baseline(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(1, "19:00"): {2, 4}, (2, "19:30"): {4}}
    await baselined(sctx, resy, clock, LATE)
    resy.blocked = {4}  # size 4 answers empty 200s: slot 2 vanishes from the answer
    for _ in range(2):
        assert await poll_scripted(sctx, resy, LATE) == "partial_block"
        clock.tick()
    assert baseline_ids(engine, LATE) == {slot_key(1, "19:00"), slot_key(2, "19:30")}
    resy.blocked = set()  # the block lifts: slot 2 was there all along, no drop
    assert await poll_scripted(sctx, resy, LATE) == "healthy"
    assert kinds(engine) == []


async def test_a_baseline_slot_missing_from_a_suspect_shrink_stays_in_the_baseline(
    sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    resy.slots = {(v, "19:00"): {2} for v in range(1, 13)}
    await baselined(sctx, resy, clock, LATE)
    full = dict(resy.slots)
    resy.slots = {(1, "19:00"): {2}}  # a sharp shrink is held once ...
    assert await poll_scripted(sctx, resy, LATE) == "suspect_soft_block"
    assert len(baseline_ids(engine, LATE)) == 12
    resy.slots = full  # ... and the old picture comes back: nothing happened
    clock.tick()
    assert await poll_scripted(sctx, resy, LATE) == "healthy"
    assert kinds(engine) == []


async def test_open_slots_stored_outside_the_share_close_nothing(
    db_url: str, sctx: PollContext, engine: Engine, resy: ScriptedResy, clock: Clock
) -> None:
    """Slots stored before a slot had one bucket: the 15:00 bucket held 17:00 tables too."""
    resy.slots = {(1, "15:00"): {2}, (9, "17:00"): {2}}
    before = poller_settings(db_url, max_attempts=1, anchors=("15:00",))  # the old window
    async with scripted_context(before, db_url, resy) as old:
        old.clock = clock
        await baselined(old, resy, clock, EARLY)
        resy.slots[(3, "17:00")] = {2}
        assert await poll_scripted(old, resy, EARLY) == "healthy"
    assert kinds(engine) == [("NEW_DROP", slot_key(3, "17:00"))]
    assert slot_key(9, "17:00") in baseline_ids(engine, EARLY)

    clock.tick()  # the rule starts: both 17:00 tables are still open, now the 19:00 bucket's
    assert await poll_scripted(sctx, resy, EARLY) == "healthy"
    assert kinds(engine) == [("NEW_DROP", slot_key(3, "17:00"))]  # no false CLOSED
    assert open_slot_ids(engine, EARLY) == {slot_key(1, "15:00")}
    assert baseline_ids(engine, EARLY) == {slot_key(1, "15:00")}
    clock.tick()
    assert await poll_scripted(sctx, resy, EARLY) == "healthy"
    assert len(events(engine)) == 1


# --- the share function (shared/shares.py) ------------------------------------------------


def t(hhmm: str) -> dt.time:
    return dt.time.fromisoformat(hhmm)


def m(hhmm: str) -> int:
    return minute_of_day(t(hhmm))


def test_a_tie_goes_to_the_later_anchor() -> None:
    anchors = (t("15:00"), t("19:00"))
    early, late = (bucket_share(a, anchors, TWO_HOURS) for a in anchors)
    assert early == Share(m("13:00"), m("17:00"))
    assert late == Share(m("17:00"), m("21:00") + 1)
    assert late.contains(t("17:00")) and not early.contains(t("17:00"))
    assert early.contains(t("16:59")) and not late.contains(t("16:59"))
    # An odd gap has no tie: 17:00 is a minute nearer 15:00 than 19:01.
    odd = (t("15:00"), t("19:01"))
    assert bucket_share(t("15:00"), odd, TWO_HOURS).contains(t("17:00"))
    assert bucket_share(t("19:01"), odd, TWO_HOURS) == Share(m("17:01"), m("21:01") + 1)


def test_one_anchor_keeps_its_whole_window_within_the_day() -> None:
    assert bucket_share(t("19:00"), [t("19:00")], TWO_HOURS) == Share(m("17:00"), m("21:01"))
    assert bucket_share(t("19:00"), [], TWO_HOURS) == Share(m("17:00"), m("21:01"))
    assert bucket_share(t("23:00"), [], TWO_HOURS) == Share(m("21:00"), 1440)
    assert bucket_share(t("01:00"), [], TWO_HOURS) == Share(0, m("03:01"))
    assert bucket_share(t("19:00"), [], dt.timedelta(0)) == Share(m("19:00"), m("19:01"))


def test_anchors_in_any_order() -> None:
    sorted_ = [t("12:00"), t("15:00"), t("19:00")]
    shuffled = [t("19:00"), t("12:00"), t("15:00"), t("12:00")]
    for anchor in sorted_:
        assert bucket_share(anchor, shuffled, TWO_HOURS) == bucket_share(anchor, sorted_, TWO_HOURS)


def test_anchors_closer_than_two_windows_split_at_the_midpoint() -> None:
    anchors = (t("18:00"), t("19:00"))
    assert bucket_share(t("18:00"), anchors, TWO_HOURS) == Share(m("16:00"), m("18:30"))
    assert bucket_share(t("19:00"), anchors, TWO_HOURS) == Share(m("18:30"), m("21:01"))


def test_anchors_further_apart_than_two_windows_keep_their_windows() -> None:
    anchors = (t("12:00"), t("19:00"))
    early, late = (bucket_share(a, anchors, TWO_HOURS) for a in anchors)
    assert early == Share(m("10:00"), m("14:01")) and late == Share(m("17:00"), m("21:01"))
    assert not early.contains(t("15:30")) and not late.contains(t("15:30"))


@pytest.mark.parametrize(
    ("anchors", "hours"),
    [
        (("15:00", "19:00"), 2),
        (("18:00", "19:00", "19:01", "23:59"), 2),
        (("00:00", "07:30", "12:15", "12:16", "20:45"), 5),
        (("10:00",), 0),
        (("06:00", "18:00"), 12),
    ],
)
def test_every_minute_has_at_most_one_bucket_the_nearest_anchor(
    anchors: tuple[str, ...], hours: int
) -> None:
    times = [t(a) for a in anchors]
    window = dt.timedelta(hours=hours)
    shares = {a: bucket_share(a, times, window) for a in times}
    for minute in range(1440):
        moment = dt.time(minute // 60, minute % 60)
        owners = [a for a, share in shares.items() if share.contains(moment)]
        distance = {a: abs(minute - minute_of_day(a)) for a in times}
        nearest = min(times, key=lambda a: (distance[a], -minute_of_day(a)))
        expected = [nearest] if distance[nearest] <= hours * 60 else []
        assert owners == expected, (moment, owners, expected)


def test_a_bucket_spec_keeps_its_day_and_its_share() -> None:
    spec = BucketSpec(LATE, TODAY, t("19:00"), (2,), TWO_HOURS, anchors=(t("15:00"), t("19:00")))
    at = dt.datetime.combine
    assert spec.contains(at(TODAY, t("17:00"))) and spec.contains(at(TODAY, t("21:00")))
    assert not spec.contains(at(TODAY, t("16:59"))) and not spec.contains(at(TODAY, t("21:01")))
    assert not spec.contains(at(TODAY + dt.timedelta(days=1), t("19:00")))
