"""The realistic model as one object: search it at any instant, ask it what really dropped.

`DropWorld` answers `search(day, party_size, time_filter, at)` for any datetime, in virtual
time and without threads, from the intervals drops.py generates, and `true_drops(t0, t1)` is
the ground truth a detector is scored on: every open interval that started in [t0, t1). The
HTTP simulator (server.py) serves the same answers, so a poller sees exactly this world.

Speed: per (slot day, party size, observation day, time window) the intervals become one
sorted event list with a cursor; a search moves the cursor to `at` (bisect), applying the
events it passes to an answer kept in order, and hands back the same tuple until an event or
the template period changes. Searches that move forward cost only the events they pass;
going back in time replays that observation day's events once.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tools.simulator.catalog import Venue, generate_venues
from tools.simulator.drops import (
    Cell,
    Drop,
    Interval,
    cancellation_intervals,
    local_midnight,
    release_intervals,
    venue_cells,
)
from tools.simulator.model import (
    TEMPLATE_PERIOD_S,
    Slot,
    TimeWindow,
    VenueAvailability,
    template_id,
)
from tools.simulator.releases import ReleaseSchedule, schedule_for

__all__ = ["DEFAULT_ZONE", "Drop", "DropWorld"]

DEFAULT_ZONE = "America/New_York"
DEFAULT_ANCHORS = ("15:00", "19:00")
DEFAULT_PARTY_SIZES = (2, 4)
# How many generated slot days, (slot day, observation day) pairs and timelines are kept.
MEMO_RELEASES = 64
MEMO_CANCELLATIONS = 256
MEMO_TIMELINES = 512
MEMO_TEMPLATE_PERIODS = 8


def _posix(at: datetime) -> float:
    """Naive datetimes are taken as UTC, like the rest of the simulator."""
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


class _Timeline:
    """The open intervals of one (slot day, party size, observation day, window) as a cursor
    over their start and end events, with the answer kept sorted as events pass."""

    def __init__(self, intervals: list[Interval], make: Callable[[Interval, float], Slot]) -> None:
        self.intervals = intervals
        self.make = make
        events = sorted(
            [(iv.start, i) for i, iv in enumerate(intervals)]
            + [(iv.end, ~i) for i, iv in enumerate(intervals)]
        )
        self.times = [t for t, _ in events]
        self.ops = [op for _, op in events]
        # Rank of each interval in the answer's order (venue, time, seating).
        self.rank = [0] * len(intervals)
        for r, i in enumerate(sorted(range(len(intervals)), key=lambda i: intervals[i][2:5])):
            self.rank[i] = r
        self.pos = 0
        self.period = -1  # the template period the open Slots were made in
        self.ranks: list[int] = []  # open intervals' ranks, sorted
        self.opened: list[int] = []  # open intervals, in the same order
        self.slots: list[Slot] = []  # their Slots, in the same order
        self.answer: tuple[Slot, ...] | None = None

    def at(self, t: float) -> tuple[Slot, ...]:
        """The open Slots at t; the same tuple as last time if nothing changed."""
        if self.pos and self.times[self.pos - 1] > t:
            self.pos, self.ranks, self.opened, self.slots = 0, [], [], []
            self.answer = None
        period = int(t // TEMPLATE_PERIOD_S)
        if period != self.period:
            self.period = period
            self.slots = [self.make(self.intervals[i], t) for i in self.opened]
            self.answer = None
        target = bisect_right(self.times, t, lo=self.pos)
        if target != self.pos:
            ranks, opened, slots = self.ranks, self.opened, self.slots
            for op in self.ops[self.pos : target]:
                i = op if op >= 0 else ~op
                r = self.rank[i]
                k = bisect_left(ranks, r)
                if op >= 0:
                    ranks.insert(k, r)
                    opened.insert(k, i)
                    slots.insert(k, self.make(self.intervals[i], t))
                elif k < len(ranks) and ranks[k] == r:
                    del ranks[k], opened[k], slots[k]
            self.pos = target
            self.answer = None
        if self.answer is None:
            self.answer = tuple(self.slots)
        return self.answer


class DropWorld:
    """A seeded market whose tables drop like the real thing (see drops.py, releases.py).

    `start_day`, `window_days`, `anchors` and `party_sizes` describe what a poller watches:
    `true_drops` by default lists only the drops it could see (slot day within `window_days`
    of the drop's local date, slot time within an anchor's +/- 2 h, a watched party size).
    """

    def __init__(
        self,
        seed: int = 7,
        venue_count: int = 300,
        market_zone: str = DEFAULT_ZONE,
        start_day: date | None = None,
        window_days: int = 14,
        anchors: Iterable[str] = DEFAULT_ANCHORS,
        party_sizes: Iterable[int] = DEFAULT_PARTY_SIZES,
        venues: tuple[Venue, ...] | None = None,
    ) -> None:
        self.seed = seed
        self.zone = ZoneInfo(market_zone)
        self.venues = venues if venues is not None else generate_venues(venue_count, seed)
        self.start_day = start_day
        self.window_days = window_days
        self.anchors = tuple(anchors)
        self.party_sizes = tuple(party_sizes)
        self.schedules = tuple(schedule_for(seed, v) for v in self.venues)
        self._cells: tuple[tuple[Cell, ...], ...] = tuple(venue_cells(v) for v in self.venues)
        self._by_id = {v.venue_id: v for v in self.venues}
        self._seatings = tuple(v.seating_types for v in self.venues)
        self._configs = tuple(tuple(v.config_id(s) for s in v.seating_types) for v in self.venues)
        self._template_memo: dict[int, list[int]] = {}
        self._lock = threading.RLock()
        self._releases: dict[date, list[list[Interval]]] = {}
        self._cancellations: dict[tuple[date, date], list[Interval]] = {}
        self._timelines: dict[tuple[date, int, date, int, int], _Timeline] = {}

    # -- the truth a learner should find -------------------------------------------------

    def release_schedule(self) -> list[ReleaseSchedule]:
        """Every venue's release rule: venue_id, tier, lead_days, nominal local_time, jitter."""
        return list(self.schedules)

    def live_days(self, at: datetime | None = None) -> list[date]:
        """The slot days a watcher polls: `window_days` from the market date of `at` (default
        `start_day`)."""
        if at is not None:
            first = datetime.fromtimestamp(_posix(at), self.zone).date()
        elif self.start_day is not None:
            first = self.start_day
        else:
            raise ValueError("live_days needs `at` or a start_day")
        return [first + timedelta(days=n) for n in range(self.window_days)]

    # -- searching -----------------------------------------------------------------------

    def search(
        self, day: date, party_size: int, time_filter: str | None, at: datetime
    ) -> tuple[Slot, ...]:
        """The slots open at `at` for `day` within time_filter +/- 2 h, by (venue, time,
        seating): exactly what the HTTP simulator serves at that instant."""
        return self.search_window(day, party_size, TimeWindow.around(time_filter), at)

    def search_window(
        self, day: date, party_size: int, window: TimeWindow, at: datetime
    ) -> tuple[Slot, ...]:
        t = _posix(at)
        observed = datetime.fromtimestamp(t, self.zone).date()
        if day < observed:
            return ()
        with self._lock:
            return self._timeline(day, party_size, observed, window).at(t)

    def search_venues(
        self, day: date, party_size: int, window: TimeWindow, at: datetime
    ) -> tuple[VenueAvailability, ...]:
        """The same answer grouped by venue, ordered by venue id (what server.py renders)."""
        by_id = self._by_id
        grouped: dict[int, list[Slot]] = {}
        for slot in self.search_window(day, party_size, window, at):
            grouped.setdefault(slot.venue_id, []).append(slot)
        return tuple(VenueAvailability(by_id[v], tuple(s)) for v, s in grouped.items())

    def _maker(self, day: date, party_size: int) -> Callable[[Interval, float], Slot]:
        venues, seatings, configs = self.venues, self._seatings, self._configs

        def make(iv: Interval, t: float) -> Slot:
            return Slot(
                venues[iv.venue].venue_id,
                day,
                iv.minute,
                seatings[iv.venue][iv.seat],
                party_size,
                configs[iv.venue][iv.seat],
                self._templates(t)[iv.venue],
            )

        return make

    def _templates(self, t: float) -> list[int]:
        """Every venue's template id in t's period (they rotate, tokens are not identities)."""
        period = int(t // TEMPLATE_PERIOD_S)
        found = self._template_memo.get(period)
        if found is None:
            found = [template_id(v.key, t) for v in self.venues]
            _remember(self._template_memo, period, found, MEMO_TEMPLATE_PERIODS)
        return found

    # -- ground truth --------------------------------------------------------------------

    def true_drops(
        self,
        t0: datetime,
        t1: datetime,
        *,
        party_sizes: Iterable[int] | None = None,
        anchors: Iterable[str] | None = None,
        window_days: int | None = None,
    ) -> list[Drop]:
        """Every open interval that started in [t0, t1), sorted by start.

        Only drops a watcher could see: a party size among `party_sizes` (default the
        world's), slot time within some anchor +/- 2 h (default the world's anchors; pass
        `anchors=()` for every time), slot day within `window_days` of the start's local date.
        """
        a, b = _posix(t0), _posix(t1)
        sizes = tuple(self.party_sizes if party_sizes is None else party_sizes)
        mask = sum(1 << p for p in sizes)
        chosen = self.anchors if anchors is None else tuple(anchors)
        windows = [TimeWindow.around(x) for x in chosen]
        span = self.window_days if window_days is None else window_days
        found: list[Drop] = []
        observed = datetime.fromtimestamp(a, self.zone).date()
        last = datetime.fromtimestamp(b, self.zone).date()
        with self._lock:
            while observed <= last:
                for offset in range(span):
                    day = observed + timedelta(days=offset)
                    for iv in self._started_on(day, observed):
                        if not (a <= iv.start < b and iv.parties & mask):
                            continue
                        if windows and not any(w.contains(iv.minute) for w in windows):
                            continue
                        found.append(self._drop(day, iv))
                observed += timedelta(days=1)
        found.sort(key=lambda d: (d.start, d.venue_id, d.minute, d.seating_type))
        return found

    def _started_on(self, day: date, observed: date) -> list[Interval]:
        lo = local_midnight(observed, self.zone)
        hi = local_midnight(observed + timedelta(days=1), self.zone)
        started = [iv for ivs in self._released(day) for iv in ivs if lo <= iv.start < hi]
        return started + self._cancelled(day, observed)

    def _drop(self, day: date, iv: Interval) -> Drop:
        venue = self.venues[iv.venue]
        sizes = tuple(p for p in range(1, 64) if iv.parties >> p & 1)
        return Drop(
            venue.venue_id,
            day,
            iv.minute,
            venue.seating_types[iv.seat],
            sizes,
            iv.start,
            iv.end,
            iv.kind,
        )

    # -- generation, memoised (the memo never changes an answer) --------------------------

    def _released(self, day: date) -> list[list[Interval]]:
        found = self._releases.get(day)
        if found is None:
            seed, zone = self.seed, self.zone
            found = [
                release_intervals(seed, i, v, self.schedules[i], self._cells[i], day, zone)
                for i, v in enumerate(self.venues)
            ]
            _remember(self._releases, day, found, MEMO_RELEASES)
        return found

    def _cancelled(self, day: date, observed: date) -> list[Interval]:
        found = self._cancellations.get((day, observed))
        if found is None:
            found = []
            for i, ivs in enumerate(self._released(day)):
                by_cell = {(iv.minute, iv.seat): iv for iv in ivs}
                venue, schedule, cells = self.venues[i], self.schedules[i], self._cells[i]
                found += cancellation_intervals(
                    self.seed, i, venue, schedule, cells, by_cell, day, observed, self.zone
                )
            _remember(self._cancellations, (day, observed), found, MEMO_CANCELLATIONS)
        return found

    def _timeline(
        self, day: date, party_size: int, observed: date, window: TimeWindow
    ) -> _Timeline:
        first, last = window.first_minute, window.last_minute
        key = (day, party_size, observed, first, last)
        timeline = self._timelines.get(key)
        if timeline is None:
            bit = 1 << party_size
            lo = local_midnight(observed, self.zone)
            hi = local_midnight(observed + timedelta(days=1), self.zone)
            intervals = [
                iv
                for ivs in self._released(day)
                for iv in ivs
                if iv.parties & bit and first <= iv.minute <= last and iv.end > lo and iv.start < hi
            ]
            intervals += [
                iv
                for iv in self._cancelled(day, observed)
                if iv.parties & bit and first <= iv.minute <= last
            ]
            timeline = _Timeline(intervals, self._maker(day, party_size))
            _remember(self._timelines, key, timeline, MEMO_TIMELINES)
        return timeline


def _remember(memo: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    if len(memo) >= limit:
        del memo[next(iter(memo))]
    memo[key] = value
