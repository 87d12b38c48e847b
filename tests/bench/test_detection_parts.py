"""The detection benchmark's own rules: its figures are only as honest as its limiter, its
emulated diff and its matching (bench/detection_parts.py)."""

from __future__ import annotations

import datetime as dt
import random
from types import SimpleNamespace
from typing import Any, cast

from bench.detection_parts import (
    Emulation,
    Limiter,
    NewDrop,
    Run,
    Scored,
    live_buckets,
    score,
    window_max,
)
from tools.simulator.dropworld import Drop, DropWorld

DAY = dt.date(2026, 12, 7)


class World:
    """Open intervals (venue, minute, start, end) searched like DropWorld.search."""

    def __init__(self, intervals: list[tuple[int, int, float, float]]) -> None:
        self.intervals = intervals

    def search(self, day: dt.date, size: int, anchor: str, at: dt.datetime) -> tuple[Any, ...]:
        t, hh, mm = at.timestamp(), *map(int, anchor.split(":"))
        return tuple(
            SimpleNamespace(venue_id=v, minute=m, seating_type="Indoor")
            for v, m, start, end in self.intervals
            if start <= t < end and abs(m - (hh * 60 + mm)) <= 120
        )


def emulation(intervals: list[tuple[int, int, float, float]]) -> Emulation:
    buckets = live_buckets(DAY, 1, ("15:00", "19:00"), 2)
    return Emulation(cast(DropWorld, World(intervals)), buckets, (2, 4))


def test_the_limiter_never_lets_more_than_the_budget_through_and_uses_it() -> None:
    for pauses in ([0.0], [0.0, 0.0, 0.05, 0.7, 0.013]):
        limiter, sent, t, rng = Limiter(5.0), list[float](), 0.0, random.Random(1)
        while t < 300:
            t = limiter.earliest(t + rng.choice(pauses), 2)
            sent += limiter.take(t, 2)
        assert sent == sorted(sent)
        assert window_max(sent, 1.0) == 5 and window_max(sent, 60.0) <= 300
        if pauses == [0.0]:  # a poller that always has a bucket due gets the whole budget
            assert len(sent) / sent[-1] > 4.95


def test_a_baseline_slot_that_closes_and_reopens_is_a_drop_and_a_table_opens_once() -> None:
    # venue 1 at 14:00 is open from the start, closes at 10 s, reopens at 20 s; venue 2 at
    # 17:00 (between the anchors: the 19:00 bucket's share) opens at 30 s.
    e = emulation([(1, 840, 0, 10), (1, 840, 20, 99), (2, 1020, 30, 99)])
    late, early = "2026-12-07_19:00", "2026-12-07_15:00"
    for t in (0.0, 1.0, 2.0, 5.0):
        e.poll(early, t)  # three non-empty answers: the baseline
    assert e.new_drops == []
    assert e.poll(early, 12.0) == (0, 0)  # a baseline slot gone: no CLOSED, no drop
    assert e.poll(early, 25.0) == (1, 1)  # back: a NEW_DROP
    for t in (0.0, 1.0, 2.0, 3.0):  # empty answers do not count towards a baseline
        e.poll(late, t)
    assert e.fresh(late) is False and e.state[late].nonempty == 0
    assert e.poll(early, 31.0) == (0, 1)  # 17:00 is in its search but not in its share
    e.poll(late, 31.0)  # the first non-empty answer: baseline, not a drop
    assert [d.bucket_id for d in e.new_drops] == [early]


def test_a_new_drop_matches_a_true_drop_open_at_its_time_else_it_is_false() -> None:
    def drop(start: float, end: float) -> Scored:
        truth = Drop(1, DAY, 1140, "Indoor", (2, 4), start, end, "cancellation")
        return Scored("2026-12-07_19:00", (1, 1140, "Indoor"), truth)

    truth = [drop(100, 105), drop(200, 260), drop(300, 900)]
    classes = {"all": [0, 1, 2]}
    found = [NewDrop(t[0], t[1], at) for t, at in ((truth[0], 103.0), (truth[1], 150.0))]
    found += [NewDrop(truth[2][0], truth[2][1], at) for at in (301.5, 302.0)]
    s = score(Run("x", [], found, 4, 1000.0), truth, classes, 5.0)
    assert s.recall() == (2, 3)
    assert s.delays(truth) == [1.5, 3.0]
    assert s.false == 2  # 150 s: no true drop open; 302 s: the same drop a second time
