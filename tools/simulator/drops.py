"""The realistic availability model's generator: every interval during which a table is open.

A table slot is a cell (venue, slot day, slot minute, seating); its life is a list of
disjoint open intervals [start, end) in POSIX seconds. Two processes make them:

- the release (one per venue and slot day, at the venue's schedule, releases.py) opens every
  cell at once; how long each stays open depends on the venue's tier and on prime time. Hot
  venues' prime tables go within seconds to a few minutes (public reports: a whole 09:00
  release gone in about 2 s, a daily 11:00 release within 3 minutes); a share of the cells
  never sells and stays open until its start time: the long-lived background.
- cancellations: a Poisson process per (venue, slot day, observation day), more of them as
  the slot day nears; each reopens a booked cell for a while, seconds to minutes at prime
  time at popular venues, tens of minutes to hours off-peak.

Every number comes from a random.Random seeded by a stable key of (seed, venue, day...), so a
world is a pure function of its seed, whatever order it is asked in. Cancellations of one
observation day end a second before its local midnight, so a day never depends on the day
before. Times are POSIX seconds rounded to the millisecond (a datetime holds them exactly).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from shared.slots import slot_id_for
from tools.simulator.catalog import Venue, mix64, stable_key
from tools.simulator.model import LAST_SLOT_MINUTE, SLOT_STEP_MINUTES
from tools.simulator.releases import HOT, POPULAR, REGULAR, ReleaseSchedule

PRIME_FIRST_MINUTE = 18 * 60
PRIME_LAST_MINUTE = 21 * 60
RELEASE = "release"
CANCELLATION = "cancellation"

# A release appears over this many seconds (the cells of one release are not simultaneous).
RELEASE_SPREAD_S = 1.5
# After a release, how long a cell stays open: (shortest s, longest s, share that never sells),
# log-uniform between the bounds; by tier, then (prime, off-peak).
RELEASE_LIFE = {
    HOT: ((2.0, 180.0, 0.0), (20.0, 3600.0, 0.05)),
    POPULAR: ((10.0, 1200.0, 0.02), (300.0, 86_400.0, 0.08)),
    REGULAR: ((600.0, 3 * 86_400.0, 0.03), (3600.0, 7 * 86_400.0, 0.06)),
}
# Cancellations per venue, slot day and observation day (before the closeness factor).
CANCEL_RATE = {HOT: 16.0, POPULAR: 5.0, REGULAR: 1.2}
# How long a reopened cell stays open, log-uniform: by tier, then (prime, off-peak).
CANCEL_LIFE = {
    HOT: ((3.0, 180.0), (300.0, 7200.0)),
    POPULAR: ((10.0, 600.0), (300.0, 7200.0)),
    REGULAR: ((120.0, 3600.0), (1200.0, 6 * 3600.0)),
}
# Cancellations come at the rate above between these local hours; at night at this share of it.
DAY_HOURS = (7, 24)
NIGHT_SHARE = 0.25
# A booked prime-time table is this many times likelier to be cancelled than an off-peak one.
PRIME_CANCEL_WEIGHT = 4.0
# Nothing opens this close to the slot's start (a table nobody could reach in time).
LAST_CALL_S = 15 * 60.0
# Cells of one slot reopen only this long after they closed (two intervals never touch).
MIN_GAP_S = 1.0
# Table shapes (party sizes a cell seats) and how common they are.
TABLE_SHAPES = ((1, 2, 4), (2, 4, 3), (3, 4, 2), (4, 6, 1))


def closeness(days_ahead: int) -> float:
    """Cancellations grow as the slot day nears (plans change late)."""
    if days_ahead <= 0:
        return 1.5
    if days_ahead <= 2:
        return 1.0
    if days_ahead <= 7:
        return 0.5
    return 0.25


def is_prime(minute: int) -> bool:
    return PRIME_FIRST_MINUTE <= minute <= PRIME_LAST_MINUTE


class Interval(NamedTuple):
    """One open interval of one cell: `parties` is a bit mask of the party sizes it seats."""

    start: float
    end: float
    venue: int  # index into the world's venues
    minute: int
    seat: int  # index into the venue's seating types
    parties: int
    kind: str


class Cell(NamedTuple):
    minute: int
    seat: int
    parties: int
    prime: bool


def venue_cells(venue: Venue) -> tuple[Cell, ...]:
    """The venue's slot grid; each cell's table shape is stable from day to day."""
    total = sum(w for *_, w in TABLE_SHAPES)
    cells = []
    for minute in range(venue.first_minute, LAST_SLOT_MINUTE + 1, SLOT_STEP_MINUTES):
        for seat in range(len(venue.seating_types)):
            lo, hi = _shape(mix64(venue.key ^ (minute << 4 | seat)) % total)
            lo, hi = max(lo, venue.min_party_size), min(hi, venue.max_party_size)
            if lo > hi:
                lo = venue.min_party_size
                hi = min(lo + 1, venue.max_party_size)
            mask = sum(1 << p for p in range(lo, hi + 1))
            cells.append(Cell(minute, seat, mask, is_prime(minute)))
    return tuple(cells)


def _shape(pick: int) -> tuple[int, int]:
    """The table shape `pick` falls on, weights laid end to end."""
    for lo, hi, weight in TABLE_SHAPES:
        if pick < weight:
            return lo, hi
        pick -= weight
    raise ValueError(f"pick {pick} beyond the shapes' total weight")


def local_noon(day: date, zone: ZoneInfo) -> float:
    """POSIX second of local noon: slot minutes are offsets from it (right on DST days too)."""
    return datetime.combine(day, time(12), tzinfo=zone).timestamp()


def local_midnight(day: date, zone: ZoneInfo) -> float:
    return datetime.combine(day, time(), tzinfo=zone).timestamp()


def slot_ts(noon: float, minute: int) -> float:
    return noon + (minute - 720) * 60.0


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return float(lo * (hi / lo) ** rng.random())


def release_intervals(
    seed: int,
    index: int,
    venue: Venue,
    schedule: ReleaseSchedule,
    cells: tuple[Cell, ...],
    day: date,
    zone: ZoneInfo,
) -> list[Interval]:
    """The release of `day` at one venue: one interval per cell, starting at the release."""
    released = schedule.release_at(seed, day, zone)
    noon = local_noon(day, zone)
    rng = random.Random(stable_key("release-cells", seed, venue.venue_id, day))
    prime_life, off_life = RELEASE_LIFE[schedule.tier]
    found = []
    for cell in cells:
        closes = slot_ts(noon, cell.minute)
        start = round(released + RELEASE_SPREAD_S * rng.random(), 3)
        lo, hi, keep = prime_life if cell.prime else off_life
        life = closes - start if rng.random() < keep else _log_uniform(rng, lo, hi)
        end = round(min(start + life, closes), 3)
        if end - start >= MIN_GAP_S:
            found.append(Interval(start, end, index, cell.minute, cell.seat, cell.parties, RELEASE))
    return found


def cancellation_intervals(
    seed: int,
    index: int,
    venue: Venue,
    schedule: ReleaseSchedule,
    cells: tuple[Cell, ...],
    released: dict[tuple[int, int], Interval],
    day: date,
    observed: date,
    zone: ZoneInfo,
) -> list[Interval]:
    """Cells of `day` that a cancellation reopens on the local date `observed`.

    `released` maps (minute, seat) to the cell's release interval: a cell reopens only once
    it was released and booked, never while it is open.
    """
    days_ahead = (day - observed).days
    if days_ahead < 0 or not cells:
        return []
    first_h, last_h = DAY_HOURS
    per_second = CANCEL_RATE[schedule.tier] * closeness(days_ahead) / ((last_h - first_h) * 3600)
    midnight = local_midnight(observed, zone)
    day_from, day_to = midnight + first_h * 3600.0, midnight + last_h * 3600.0
    day_end = local_midnight(observed + timedelta(days=1), zone)
    noon = local_noon(day, zone)
    rng = random.Random(stable_key("cancel", seed, venue.venue_id, day, observed))
    weights = [PRIME_CANCEL_WEIGHT if c.prime else 1.0 for c in cells]
    prime_life, off_life = CANCEL_LIFE[schedule.tier]
    last_end: dict[tuple[int, int], float] = {}
    found: list[Interval] = []
    t = midnight
    while True:
        t += rng.expovariate(per_second)
        if t >= day_end:
            return found
        night = not day_from <= t < day_to
        cell = rng.choices(cells, weights=weights)[0]
        if night and rng.random() >= NIGHT_SHARE:
            continue
        life = _log_uniform(rng, *(prime_life if cell.prime else off_life))
        closes = slot_ts(noon, cell.minute)
        key = (cell.minute, cell.seat)
        first = released.get(key)
        if first is None or t < first.end + MIN_GAP_S or t > closes - LAST_CALL_S:
            continue  # not released yet, still open from its release, or too late
        if t < last_end.get(key, -math.inf) + MIN_GAP_S:
            continue  # still open from an earlier cancellation
        t, end = round(t, 3), round(min(t + life, closes, day_end - MIN_GAP_S), 3)
        if end - t < MIN_GAP_S:
            continue
        last_end[key] = end
        found.append(Interval(t, end, index, cell.minute, cell.seat, cell.parties, CANCELLATION))


@dataclass(frozen=True, slots=True)
class Drop:
    """One true drop: the cell opened at `start` and stayed open until `end` (POSIX seconds).

    `slot_start` is the slot's market-local start (naive), from which the poller's slot id
    follows (`slot_id()`); a cell that closes and opens again is the same slot, a second Drop.
    """

    venue_id: int
    day: date
    minute: int
    seating_type: str
    party_sizes: tuple[int, ...]
    start: float
    end: float
    kind: str  # "release" or "cancellation"

    @property
    def time(self) -> str:
        return f"{self.minute // 60:02d}:{self.minute % 60:02d}"

    @property
    def slot_start(self) -> datetime:
        return datetime.combine(self.day, datetime.min.time()) + timedelta(minutes=self.minute)

    @property
    def started_at(self) -> datetime:
        return datetime.fromtimestamp(self.start, UTC)

    @property
    def ended_at(self) -> datetime:
        return datetime.fromtimestamp(self.end, UTC)

    @property
    def lifetime(self) -> float:
        return self.end - self.start

    def slot_id(self, provider: str = "resy") -> str:
        return slot_id_for(provider, self.venue_id, self.slot_start, self.seating_type)
