"""The realistic drops model (tools/simulator/dropworld.py): seeded, releases at the venue's
local time and lead, short prime-time cancellations, quiet buckets, ground truth that agrees
with what searches show, and the HTTP simulator serving the same world."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from datetime import date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest

from shared.slots import slot_id_for
from tools.simulator.__main__ import build_parser, main
from tools.simulator.dropworld import Drop, DropWorld
from tools.simulator.model import Slot
from tools.simulator.server import ScriptedSlot, ScriptedVenue, Simulator

from .simulating import FakeClock, all_slot_ids, http

ZONE = ZoneInfo("America/New_York")
TODAY = date(2026, 12, 7)
MIDNIGHT = datetime(2026, 12, 7, tzinfo=ZONE)
ANCHORS = ("15:00", "19:00")


@cache
def world(seed: int = 7, venues: int = 120) -> DropWorld:
    return DropWorld(seed=seed, venue_count=venues)


@cache
def day_of_drops(seed: int = 7, venues: int = 120) -> tuple[Drop, ...]:
    """Every drop of one market day, at any slot time (anchors=())."""
    return tuple(world(seed, venues).true_drops(MIDNIGHT, MIDNIGHT + timedelta(days=1), anchors=()))


Key = tuple[int, int, str]


def keys(slots: tuple[Slot, ...]) -> set[Key]:
    return {(s.venue_id, s.minute, s.seating_type) for s in slots}


def ids(slots: tuple[Slot, ...]) -> set[str]:
    return {slot_id_for("resy", s.venue_id, s.start, s.seating_type) for s in slots}


def test_the_same_seed_gives_the_same_world_in_any_order_of_questions() -> None:
    t0, t1 = MIDNIGHT + timedelta(hours=17), MIDNIGHT + timedelta(hours=20)
    one, two, other = DropWorld(5, 40), DropWorld(5, 40), DropWorld(6, 40)
    times = [t0 + timedelta(minutes=m) for m in (0, 90, 200, 30)]
    days = [TODAY + timedelta(days=d) for d in (0, 1, 7, 12)]
    asked_one = [one.search(d, 2, "19:00", t) for t in times for d in days]
    asked_two = [two.search(d, 2, "19:00", t) for t in reversed(times) for d in reversed(days)]
    assert asked_one == list(reversed(asked_two))
    truth = one.true_drops(t0, t1)
    assert truth == two.true_drops(t0, t1)
    assert len(truth) > 20
    assert truth != other.true_drops(t0, t1)
    assert one.release_schedule() == two.release_schedule()


def test_a_release_opens_a_burst_at_the_local_time_in_the_lead_days_bucket() -> None:
    w = world()
    hot = [s for s in w.release_schedule() if s.tier == "hot" and s.lead_days == 7]
    assert hot, "the seed has a hot venue releasing 7 days ahead"
    schedule = hot[0]
    day = TODAY + timedelta(days=7)
    released = schedule.release_at(w.seed, day, w.zone)
    local = datetime.fromtimestamp(released, ZONE)
    assert local.date() == TODAY  # the lead day's bucket: 7 days ahead of the release
    nominal = datetime.combine(TODAY, datetime.min.time(), tzinfo=ZONE) + timedelta(
        minutes=schedule.minute
    )
    lo, hi = schedule.jitter_s
    assert lo <= (local - nominal).total_seconds() <= hi

    def venue_slots(offset_s: float) -> list[Slot]:
        at = datetime.fromtimestamp(released + offset_s, ZONE)
        return [
            s
            for party in (2, 4)
            for s in w.search(day, party, None, at)
            if s.venue_id == schedule.venue_id
        ]

    assert venue_slots(-1.0) == []
    burst = venue_slots(1.6)  # every cell has appeared, none lives less than 2 s
    assert len({(s.minute, s.seating_type) for s in burst}) >= 10
    # Hot prime-time tables are gone within 3 minutes (public reports: seconds to minutes).
    assert not [s for s in venue_slots(181.6) if 18 * 60 <= s.minute <= 21 * 60]
    truth = w.true_drops(
        datetime.fromtimestamp(released - 1, ZONE),
        datetime.fromtimestamp(released + 2, ZONE),
        anchors=(),
    )
    mine = [d for d in truth if d.venue_id == schedule.venue_id]
    assert {d.kind for d in mine} == {"release"} and {d.day for d in mine} == {day}
    assert {(d.minute, d.seating_type) for d in mine} >= {(s.minute, s.seating_type) for s in burst}


def test_cancellations_are_short_at_prime_time_and_long_off_peak() -> None:
    w = world()
    tier = {s.venue_id: s.tier for s in w.release_schedule()}
    cancelled = [d for d in day_of_drops() if d.kind == "cancellation"]

    def lifetimes(prime: bool, tiers: set[str]) -> list[float]:
        return [
            d.lifetime
            for d in cancelled
            if (18 * 60 <= d.minute <= 21 * 60) == prime and tier[d.venue_id] in tiers
        ]

    busy_prime = lifetimes(True, {"hot", "popular"})
    off_peak = lifetimes(False, {"hot", "popular", "regular"})
    assert len(busy_prime) > 200 and len(off_peak) > 50
    assert statistics.median(busy_prime) < 120
    assert sum(life < 10 for life in busy_prime) > 0.1 * len(busy_prime)
    assert statistics.median(off_peak) > 20 * 60
    assert statistics.median(lifetimes(True, {"regular"})) > 5 * 60


def test_most_buckets_and_venues_are_quiet_and_churn_is_at_a_few_venues() -> None:
    drops = [d for d in day_of_drops() if d.kind == "cancellation"]
    per_bucket = Counter(
        (d.day, min(ANCHORS, key=lambda a: abs(int(a[:2]) * 60 - d.minute))) for d in drops
    )
    counts = [per_bucket[(TODAY + timedelta(days=n), a)] for n in range(14) for a in ANCHORS]
    assert sum(c < max(counts) / 10 for c in counts) >= 8  # quiet buckets
    venue_days = {(d.venue_id, d.day) for d in day_of_drops()}
    assert len(venue_days) < 0.6 * len(world().venues) * 14
    prime = Counter(d.venue_id for d in drops if 18 * 60 <= d.minute <= 21 * 60)
    top = sum(n for _, n in prime.most_common(len(world().venues) // 10))
    assert top > 0.35 * sum(prime.values())


def test_every_bucket_keeps_a_background_of_open_slots() -> None:
    w = world()
    for hour in (0, 9, 13, 19, 23):
        at = MIDNIGHT + timedelta(hours=hour, minutes=30)
        for n in range(14):
            for anchor in ANCHORS:
                for party in (2, 4):
                    day = TODAY + timedelta(days=n)
                    if n == 0 and hour >= 19:
                        continue  # tonight's tables have started
                    assert w.search(day, party, anchor, at), (day, anchor, party, hour)


def test_ground_truth_is_exactly_what_searches_see_appear() -> None:
    """Searched every second for two hours: each slot that appears is a true drop that started
    in that second, and each true drop is visible at its start and gone at its end."""
    w = world()
    day, party, anchor = TODAY + timedelta(days=1), 2, "19:00"
    t0 = MIDNIGHT + timedelta(hours=16)
    t1 = t0 + timedelta(hours=2)
    truth = [
        d for d in w.true_drops(t0, t1, party_sizes=(party,), anchors=(anchor,)) if d.day == day
    ]
    assert len(truth) >= 10
    starts: dict[Key, list[float]] = {}
    for d in truth:
        starts.setdefault((d.venue_id, d.minute, d.seating_type), []).append(d.start)
    shown = w.search(day, party, anchor, t0 - timedelta(microseconds=1))
    for second in range(2 * 3600):
        lo = t0.timestamp() + second
        now = w.search(day, party, anchor, datetime.fromtimestamp(lo + 0.999_999, ZONE))
        if now is shown:
            continue  # unchanged: the model hands back the same answer
        for appeared in keys(now) - keys(shown):
            assert [s for s in starts.get(appeared, []) if lo <= s < lo + 1], appeared
        shown = now
    for d in truth:
        key = (d.venue_id, d.minute, d.seating_type)
        assert key in keys(w.search(day, party, anchor, d.started_at))
        assert key not in keys(w.search(day, party, anchor, d.ended_at))


def test_a_slot_that_closes_and_reopens_is_a_second_drop() -> None:
    w = world()
    per_slot: dict[str, list[Drop]] = {}
    for d in day_of_drops():
        if 2 in d.party_sizes:
            per_slot.setdefault(d.slot_id(), []).append(d)
    first, second = next(ds for ds in per_slot.values() if len(ds) >= 2)[:2]
    assert first.end < second.start
    seen = [
        first.slot_id() in ids(w.search(first.day, 2, first.time, at))
        for at in (first.started_at, first.ended_at, second.started_at)
    ]
    assert seen == [True, False, True]


def test_one_slot_never_has_two_open_intervals_at_once() -> None:
    """Its drops are disjoint and a second apart: otherwise a watcher would see one drop where
    the truth has two (or a reopening would be invisible)."""
    per_slot: dict[str, list[Drop]] = {}
    for d in day_of_drops():
        per_slot.setdefault(d.slot_id(), []).append(d)
    assert any(len(ds) > 1 for ds in per_slot.values())
    for ds in per_slot.values():
        for before, after in itertools.pairwise(sorted(ds, key=lambda d: d.start)):
            assert after.start >= before.end + 1.0, (before, after)
    assert all(d.end - d.start >= 1.0 for d in day_of_drops())


def test_the_http_simulator_serves_the_models_answer() -> None:
    clock = FakeClock(MIDNIGHT + timedelta(hours=19))
    start_at = MIDNIGHT + timedelta(hours=9, minutes=59)
    with Simulator(
        venues=60, seed=3, clock=clock, model="drops", start_at=start_at, speed=2
    ) as sim:
        assert sim.drops is not None
        with http(sim.base_url) as client:
            for step in range(4):
                at = sim.virtual_now()
                assert at == start_at + timedelta(seconds=2 * 37 * step)
                for n in (1, 7):
                    day = TODAY + timedelta(days=n)
                    served = {
                        (v, start.replace(tzinfo=None), seating)
                        for v, start, seating in all_slot_ids(client, day=day, time_filter="19:00")
                    }
                    modelled = {
                        (s.venue_id, s.start, s.seating_type)
                        for s in sim.drops.search(day, 2, "19:00", at)
                    }
                    assert served == modelled and served
                clock.advance(seconds=37)
    # The server's world is the one a DropWorld of the same seed and size builds on its own.
    later = MIDNIGHT + timedelta(hours=11)
    assert sim.drops.true_drops(start_at, later) == DropWorld(3, 60).true_drops(start_at, later)


def test_a_scripted_day_still_overrides_the_drops_model() -> None:
    clock = FakeClock(MIDNIGHT + timedelta(hours=12))
    with Simulator(venues=30, seed=3, clock=clock, model="drops") as sim:
        day = TODAY + timedelta(days=2)
        sim.script_day(day, [ScriptedVenue(4242, "Scripted", [ScriptedSlot("19:30")])])
        with http(sim.base_url) as client:
            assert {v for v, _, _ in all_slot_ids(client, day=day)} == {4242}
            sim.unscript_day(day)
            assert 4242 not in {v for v, _, _ in all_slot_ids(client, day=day)}


def test_an_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="model must be one of"):
        Simulator(venues=3, model="poisson")


def test_the_command_line_serves_the_drops_model_by_default() -> None:
    assert build_parser().parse_args([]).model == "drops"
    assert build_parser().parse_args(["--model", "hash"]).model == "hash"
    with pytest.raises(SystemExit) as refused:
        main(["--start", "2026-12-07T08:58"])  # no UTC offset: ambiguous
    assert refused.value.code == 2


def test_live_days_follow_the_market_date() -> None:
    w = DropWorld(seed=1, venue_count=3, start_day=TODAY, window_days=3)
    assert w.live_days() == [TODAY + timedelta(days=n) for n in range(3)]
    late = datetime(2026, 12, 8, 4, 30, tzinfo=ZoneInfo("UTC"))  # 23:30 on the 7th in New York
    assert w.live_days(late)[0] == TODAY
    with pytest.raises(ValueError):
        DropWorld(seed=1, venue_count=3).live_days()


def test_odd_questions_get_plain_answers() -> None:
    w = world()
    at = MIDNIGHT + timedelta(hours=20)
    naive_utc = at.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)
    day = TODAY + timedelta(days=1)
    assert w.search(day, 2, "19:00", naive_utc) == w.search(day, 2, "19:00", at)
    assert w.search(TODAY - timedelta(days=1), 2, "19:00", at) == ()  # a past day
    assert w.search(TODAY + timedelta(days=400), 2, "19:00", at) == ()  # never released yet
    assert w.search(day, 20, "19:00", at) == ()  # no table that large
    whole_day = w.search(day, 2, None, at)
    assert set(w.search(day, 2, "19:00", at)) < set(whole_day)
    empty = DropWorld(seed=1, venue_count=0)
    assert empty.search(day, 2, "19:00", at) == ()
    assert empty.true_drops(MIDNIGHT, MIDNIGHT + timedelta(days=1)) == []


def test_a_daylight_saving_day_has_25_hours_of_drops_and_no_gaps() -> None:
    w = DropWorld(seed=4, venue_count=40)
    start = datetime(2026, 11, 1, tzinfo=ZONE)  # clocks go back at 02:00
    end = datetime(2026, 11, 2, tzinfo=ZONE)
    assert (end - start) == timedelta(hours=24) and end.timestamp() - start.timestamp() == 25 * 3600
    drops = w.true_drops(start, end, anchors=())
    assert drops and {datetime.fromtimestamp(d.start, ZONE).date() for d in drops} == {start.date()}
    for d in drops[:: max(1, len(drops) // 50)]:
        size = d.party_sizes[0]
        shown = w.search(d.day, size, None, d.started_at)
        assert (d.venue_id, d.minute, d.seating_type) in keys(shown)
        assert d.slot_start.hour * 60 + d.slot_start.minute == d.minute
