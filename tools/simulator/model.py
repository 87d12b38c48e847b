"""The simulated availability model: which tables are open, as a pure function of time.

Nothing changes state as time passes. Whether a candidate slot is open at simulated time t is
a hash of (seed, venue, day, time, seating, party size, period index), where the slot's
timeline is cut into periods of a slot-specific length. So two models with the same seed
agree, a test can jump the clock anywhere, and the server needs no background thread.

The venues come from catalog.py. A scripted day replaces the random model for one date with
an exact list of venues and slots, which is how tests build precise "slot appears / slot
disappears" scenarios.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

from tools.simulator.catalog import (
    MASK64,
    ScriptedVenue,
    Venue,
    generate_venues,
    mix64,
    parse_hhmm,
    scripted_venue_info,
)

LAST_SLOT_MINUTE = 22 * 60 + 30
SLOT_STEP_MINUTES = 15
WINDOW_MINUTES = 120  # a search returns slots within time_filter +/- 2 hours, inclusive

# Prime time: most tables are sold out, so few are open, but they churn faster.
PRIME_FIRST_MINUTE = 18 * 60
PRIME_LAST_MINUTE = 21 * 60
PRIME_OPEN_P = (0.03, 0.08)
OFF_PEAK_OPEN_P = (0.15, 0.25)
# Period lengths in simulated seconds (log-uniform between the bounds): minutes to hours.
PRIME_PERIOD_S = (30 * 60.0, 12 * 3600.0)
OFF_PEAK_PERIOD_S = (2 * 3600.0, 24 * 3600.0)
# A venue's template id (part of every token) rotates this often, in simulated seconds.
TEMPLATE_PERIOD_S = 300.0
# How many (day, party size) pairs the model remembers state for (28 live buckets need 28).
MEMO_DAYS = 128
# (lowest odds, odds span, shortest period, longest/shortest): the form the hot loop wants.
_PRIME = (
    PRIME_OPEN_P[0],
    PRIME_OPEN_P[1] - PRIME_OPEN_P[0],
    PRIME_PERIOD_S[0],
    PRIME_PERIOD_S[1] / PRIME_PERIOD_S[0],
)
_OFF_PEAK = (
    OFF_PEAK_OPEN_P[0],
    OFF_PEAK_OPEN_P[1] - OFF_PEAK_OPEN_P[0],
    OFF_PEAK_PERIOD_S[0],
    OFF_PEAK_PERIOD_S[1] / OFF_PEAK_PERIOD_S[0],
)

LUNCH_SERVICE_ID = 1
DINNER_SERVICE_ID = 2
DINNER_SERVICE_FROM_MINUTE = 16 * 60


def simulated_seconds(now: datetime, speed: float) -> float:
    """Simulated time: the wall clock scaled by speed (naive datetimes are taken as UTC)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.timestamp() * speed


@dataclass(frozen=True)
class TimeWindow:
    """Inclusive start-time bounds, in minutes since midnight."""

    first_minute: int
    last_minute: int

    @classmethod
    def around(cls, time_filter: str | None) -> TimeWindow:
        """time_filter +/- 2 hours; no filter means the whole day."""
        if time_filter is None:
            return cls(0, 24 * 60 - 1)
        anchor = parse_hhmm(time_filter)
        return cls(anchor - WINDOW_MINUTES, anchor + WINDOW_MINUTES)

    def contains(self, minute: int) -> bool:
        return self.first_minute <= minute <= self.last_minute


class Slot(NamedTuple):
    """One open table: everything the server needs to render a Resy slot.

    A NamedTuple rather than a frozen dataclass: a poll builds hundreds, and this is ~5x faster.
    """

    venue_id: int
    day: date
    minute: int
    seating_type: str
    party_size: int
    config_id: int
    template_id: int

    @property
    def start(self) -> datetime:
        return datetime.combine(self.day, datetime.min.time()) + timedelta(minutes=self.minute)

    @property
    def duration_minutes(self) -> int:
        return 90 if self.party_size <= 2 else 120

    @property
    def end(self) -> datetime:
        return self.start + timedelta(minutes=self.duration_minutes)

    @property
    def service_type_id(self) -> int:
        return DINNER_SERVICE_ID if self.minute >= DINNER_SERVICE_FROM_MINUTE else LUNCH_SERVICE_ID


@dataclass(frozen=True)
class VenueAvailability:
    venue: Venue
    slots: tuple[Slot, ...]


def template_id(venue_key: int, sim_t: float) -> int:
    """Rotates every TEMPLATE_PERIOD_S of simulated time, so raw tokens are not identities."""
    period = math.floor(sim_t / TEMPLATE_PERIOD_S)
    return 1_000_000 + mix64(venue_key ^ mix64(period & MASK64)) % 9_000_000


def _slot_key(venue_key: int, day_ordinal: int, minute: int, seating: int, party: int) -> int:
    return mix64(venue_key ^ ((((day_ordinal * 1440 + minute) << 4) | seating) << 6 | party))


def slot_state(slot_key: int, minute: int, t: int) -> tuple[bool, int, int]:
    """The core rule: (open?, first, last simulated second) of the period holding t.

    Period length, phase and odds all come from the slot's key. The bounds are pulled in by
    a second, so float rounding can never make a remembered state disagree with a fresh one.
    """
    p_lo, p_span, l_lo, l_ratio = _PRIME if _is_prime(minute) else _OFF_PEAK
    # Three independent 21-bit uniforms from one 64-bit key.
    u_p = (slot_key & 0x1FFFFF) / 0x200000
    u_len = ((slot_key >> 21) & 0x1FFFFF) / 0x200000
    u_phase = ((slot_key >> 42) & 0x1FFFFF) / 0x200000
    length = l_lo * l_ratio**u_len
    period = math.floor(t / length + u_phase)
    is_open = mix64(slot_key ^ (period & MASK64)) < (p_lo + p_span * u_p) * 2.0**64
    first = math.ceil((period - u_phase) * length) + 1
    last = math.floor((period + 1 - u_phase) * length) - 1
    return is_open, first, last


def _is_prime(minute: int) -> bool:
    return PRIME_FIRST_MINUTE <= minute <= PRIME_LAST_MINUTE


@dataclass(frozen=True)
class _VenueDay:
    """A venue's open (minute, seating index) pairs for one day and party size, and the
    simulated seconds [valid_from, valid_until] during which none of its slots changes."""

    valid_from: int
    valid_until: int
    open: tuple[tuple[int, int], ...]

    def holds_at(self, t: int) -> bool:
        return self.valid_from <= t <= self.valid_until


def _venue_day(venue: Venue, day_ordinal: int, party_size: int, t: int) -> _VenueDay:
    valid_from, valid_until = -(2**63), 2**63
    open_slots = []
    seatings = range(len(venue.seating_types))
    for minute in range(venue.first_minute, LAST_SLOT_MINUTE + 1, SLOT_STEP_MINUTES):
        for index in seatings:
            key = _slot_key(venue.key, day_ordinal, minute, index, party_size)
            is_open, first, last = slot_state(key, minute, t)
            if first > valid_from:
                valid_from = first
            if last < valid_until:
                valid_until = last
            if is_open:
                open_slots.append((minute, index))
    return _VenueDay(valid_from, valid_until, tuple(open_slots))


class AvailabilityModel:
    """Seeded random availability for `venue_count` venues.

    Answers are a pure function of (seed, day, party size, window, simulated second). A venue's
    day is remembered until one of its slots reaches a period boundary, so a poll costs little
    more than a dictionary lookup per venue; the memo never changes an answer.
    """

    def __init__(self, venue_count: int, seed: int, speed: float = 1.0) -> None:
        if venue_count < 0:
            raise ValueError("venue_count must be >= 0")
        if not speed > 0:
            raise ValueError("speed must be > 0")
        self.seed = seed
        self.speed = speed
        self.venues: tuple[Venue, ...] = generate_venues(venue_count, seed)
        self._memo_lock = threading.Lock()
        self._memo: dict[tuple[int, int], list[_VenueDay | None]] = {}
        # The pages of one poll ask the same question within milliseconds; answer it once.
        self._search_at = functools.lru_cache(maxsize=64)(self._search_at_second)

    def sim_seconds(self, now: datetime) -> int:
        return math.floor(simulated_seconds(now, self.speed))

    def search(
        self, day: date, party_size: int, window: TimeWindow, now: datetime
    ) -> tuple[VenueAvailability, ...]:
        """Every venue with at least one open slot in the window, ordered by venue id."""
        return self._search_at(day, party_size, window, self.sim_seconds(now))

    def _search_at_second(
        self, day: date, party_size: int, window: TimeWindow, t: int
    ) -> tuple[VenueAvailability, ...]:
        ordinal = day.toordinal()
        memo = self._memo_for(ordinal, party_size)
        found = []
        for index, venue in enumerate(self.venues):
            if not venue.seats(party_size):
                continue
            state = memo[index]
            if state is None or not state.holds_at(t):
                # Concurrent requests may both compute this; they compute the same value.
                state = memo[index] = _venue_day(venue, ordinal, party_size, t)
            slots = _slots(venue, day, party_size, t, state.open, window)
            if slots:
                found.append(VenueAvailability(venue, slots))
        return tuple(found)

    def _memo_for(self, day_ordinal: int, party_size: int) -> list[_VenueDay | None]:
        with self._memo_lock:
            memo = self._memo.get((day_ordinal, party_size))
            if memo is None:
                if len(self._memo) >= MEMO_DAYS:
                    del self._memo[next(iter(self._memo))]  # the oldest (day, party size)
                memo = self._memo[(day_ordinal, party_size)] = [None] * len(self.venues)
            return memo


def _slots(
    venue: Venue,
    day: date,
    party_size: int,
    t: int,
    open_slots: tuple[tuple[int, int], ...],
    window: TimeWindow,
) -> tuple[Slot, ...]:
    in_window = [(m, i) for m, i in open_slots if window.contains(m)]
    if not in_window:
        return ()
    tpl = template_id(venue.key, t)
    return tuple(
        Slot(
            venue.venue_id,
            day,
            minute,
            venue.seating_types[index],
            party_size,
            venue.config_id(venue.seating_types[index]),
            tpl,
        )
        for minute, index in in_window
    )


def scripted_search(
    seed: int,
    speed: float,
    venues: Iterable[ScriptedVenue],
    day: date,
    party_size: int,
    window: TimeWindow,
    now: datetime,
) -> tuple[VenueAvailability, ...]:
    """Exactly the scripted slots open at `now` that fit the party size and window, ordered by
    venue id."""
    t = math.floor(simulated_seconds(now, speed))
    posix = simulated_seconds(now, 1.0)  # the clock itself, in POSIX seconds
    found = []
    for scripted in sorted(venues, key=lambda v: v.venue_id):
        venue = scripted_venue_info(seed, scripted)
        tpl = template_id(venue.key, t)
        slots = tuple(
            Slot(
                scripted.venue_id,
                day,
                s.minute,
                s.seating_type,
                party_size,
                venue.config_id(s.seating_type),
                tpl,
            )
            for s in sorted(scripted.slots, key=lambda s: (s.minute, s.seating_type))
            if party_size in s.party_sizes and window.contains(s.minute) and s.is_open_at(posix)
        )
        if slots:
            found.append(VenueAvailability(venue, slots))
    return tuple(found)
