"""Who releases inventory when: each venue's popularity tier and release schedule.

Public reports (see docs/architecture.md, The simulator): venues publish a day's tables at a
fixed market-local time for a fixed lead (09:00 or 10:00 for 7, 14, 21 or 30 days ahead,
midnight for a month ahead); some venues release a little before the hour, one was seen at
10:15 rather than on the hour. Hot venues are a small share of the market, and most of the
churn happens there. Everything here is a pure function of (seed, venue), so the schedule is
the truth a learner of release windows should recover.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from tools.simulator.catalog import Venue, stable_key

HOT, POPULAR, REGULAR = "hot", "popular", "regular"
# Share of venues per tier: churn concentrates on the few hot ones.
TIER_WEIGHTS = ((HOT, 0.08), (POPULAR, 0.17), (REGULAR, 0.75))

# (lead days, nominal local release minute, weight): the common patterns of public reports.
RELEASE_PATTERNS = (
    (7, 9 * 60, 4),
    (7, 10 * 60, 2),
    (14, 9 * 60, 3),
    (14, 10 * 60, 2),
    (21, 10 * 60, 1),
    (30, 0, 3),
    (7, 11 * 60, 1),
    (14, 12 * 60, 1),
)
# Share of venues whose nominal moment is off the hour (the "10:15" kind), and by how much.
OFF_HOUR_SHARE = 0.1
OFF_HOUR_MINUTES = (5, 10, 15)
# Day-to-day jitter of the release moment, seconds around the nominal minute, per style.
ON_TIME, EARLY, SLOPPY = "on-time", "early", "sloppy"
JITTER_S = {ON_TIME: (0.0, 20.0), EARLY: (-180.0, 15.0), SLOPPY: (-90.0, 240.0)}
STYLE_WEIGHTS = ((ON_TIME, 0.6), (EARLY, 0.25), (SLOPPY, 0.15))


@dataclass(frozen=True)
class ReleaseSchedule:
    """One venue's release rule: slots for day D open at `local_time` on D - `lead_days`
    (market-local), give or take `jitter_s` seconds, which differ from day to day."""

    venue_id: int
    tier: str
    lead_days: int
    local_time: str  # HH:MM, the nominal moment
    style: str
    jitter_s: tuple[float, float]

    @property
    def minute(self) -> int:
        hh, mm = self.local_time.split(":")
        return int(hh) * 60 + int(mm)

    def release_at(self, seed: int, day: date, zone: ZoneInfo) -> float:
        """POSIX second at which slots for `day` are released (deterministic jitter)."""
        lo, hi = self.jitter_s
        u = random.Random(stable_key("release-jitter", seed, self.venue_id, day)).random()
        local = datetime.combine(day - timedelta(days=self.lead_days), time(), tzinfo=zone)
        local += timedelta(minutes=self.minute)
        return local.timestamp() + lo + (hi - lo) * u


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    names = [n for n, _ in weighted]
    return rng.choices(names, weights=[w for _, w in weighted])[0]


def schedule_for(seed: int, venue: Venue) -> ReleaseSchedule:
    rng = random.Random(stable_key("release", seed, venue.venue_id))
    tier = _pick(rng, TIER_WEIGHTS)
    lead, minute, _ = rng.choices(RELEASE_PATTERNS, weights=[w for *_, w in RELEASE_PATTERNS])[0]
    if minute and rng.random() < OFF_HOUR_SHARE:
        minute += rng.choice(OFF_HOUR_MINUTES)
    style = _pick(rng, STYLE_WEIGHTS)
    return ReleaseSchedule(
        venue_id=venue.venue_id,
        tier=tier,
        lead_days=lead,
        local_time=f"{minute // 60:02d}:{minute % 60:02d}",
        style=style,
        jitter_s=JITTER_S[style],
    )
