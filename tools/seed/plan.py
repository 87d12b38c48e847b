"""The shape of seeded history: which buckets get how many drops, and which slots they are.

Every bucket (a day and an anchor) gets the same number of drop *pairs* (a NEW_DROP and its
CLOSED). In each live bucket the first `open_drops` pairs are still open (no CLOSED; an
`open_slots` row points at the NEW_DROP), `fresh` of them opened in the last five minutes, and
`baseline` more slots are open but were already open when the bucket was first seen. Pairs are
numbered globally from 1, so event ids are `id_base + 2n - 1` (NEW_DROP) and `id_base + 2n`
(CLOSED) whatever order days are loaded in.

A slot is an index `s` into venues x start times x seatings of its bucket; `slot_for` is the
Python mirror of the SQL mapping, with the poller's own slot id, so a poll can be diffed
against seeded state.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace
from zoneinfo import ZoneInfo

from services.poller.slots import Slot, VenueInfo
from shared.db.buckets import bucket_id_for, market_today
from shared.errors import DropwatchError
from shared.settings import Settings
from shared.slots import slot_id_for

PROVIDER = "resy"
SEATINGS = ("Dining Room", "Bar", "Patio")
TIMES = 17  # start times per venue and bucket: anchor - 2h .. anchor + 2h, every 15 minutes
NEIGHBORHOODS = ("SoHo", "Tribeca", "West Village", "Williamsburg", "Harlem", "Chelsea")


@dataclass(frozen=True)
class Shape:
    """What the market looks like; the defaults are the 1M-event data set of the performance
    targets (docs/architecture.md, Seeding)."""

    open_ratio: float = 0.267  # currently open drops per event (267k per 1M)
    recent: int = 2700  # open drops that opened in the last five minutes, at any size
    baseline_ratio: float = 0.125  # baseline slots per open drop, in every live bucket
    mean_age_hours: float = 24.0  # age of the other open drops (exponential)


@dataclass(frozen=True)
class BucketSeed:
    bucket_id: str
    day: dt.date
    anchor: str
    live: bool
    n0: int  # pairs numbered before this bucket's
    pairs: int
    open_drops: int
    fresh: int
    baseline: int

    @property
    def events(self) -> int:
        return 2 * self.pairs - self.open_drops  # an open drop has no CLOSED yet


@dataclass(frozen=True)
class SeedPlan:
    now: dt.datetime
    today: dt.date  # in the market's zone
    market: str
    zone: str
    prime_anchors: tuple[str, ...]
    venues: int
    buckets: tuple[BucketSeed, ...]
    mean_age_hours: float = 24.0

    @property
    def days(self) -> list[dt.date]:
        return sorted({b.day for b in self.buckets})

    @property
    def events(self) -> int:
        return sum(b.events for b in self.buckets)

    @property
    def space(self) -> int:
        return slot_space(self.venues)

    def bucket(self, bucket_id: str) -> BucketSeed:
        return next(b for b in self.buckets if b.bucket_id == bucket_id)

    def without_state(self, *bucket_ids: str) -> SeedPlan:
        """The same plan with no open drops or baseline in these buckets (for a live poll)."""
        return replace(
            self,
            buckets=tuple(
                replace(b, open_drops=0, fresh=0, baseline=0) if b.bucket_id in bucket_ids else b
                for b in self.buckets
            ),
        )


def slot_space(venues: int) -> int:
    return venues * TIMES * len(SEATINGS)


def make_plan(
    settings: Settings,
    events: int,
    *,
    now: dt.datetime | None = None,
    past_days: int = 14,
    venues: int = 2000,
    shape: Shape | None = None,
) -> SeedPlan:
    """About `events` events over `past_days` past days and the settings' live window."""
    shape = shape or Shape()
    if events < 1 or venues < 1 or past_days < 0:
        raise DropwatchError("seed: events and venues must be positive, days not negative")
    moment = now or dt.datetime.now(dt.UTC)
    today = market_today(ZoneInfo(settings.market_timezone), moment)
    days = [today + dt.timedelta(days=d) for d in range(-past_days, settings.window_days)]
    anchors = tuple(settings.anchors)
    n_buckets = len(days) * len(anchors)
    n_live = settings.window_days * len(anchors)
    space = slot_space(venues)
    # Every open drop is a pair of its live bucket, so with many past days (few pairs per
    # bucket) at most events / (2 * buckets - live buckets) of them fit: fewer are open then.
    opens = min(round(shape.open_ratio * events / n_live), events // (2 * n_buckets - n_live))
    baseline = round(opens * shape.baseline_ratio)
    if opens + baseline > space:
        raise DropwatchError(
            f"seed: {events:,} events need {opens + baseline:,} open slots per bucket but "
            f"{venues:,} venues have {space:,}; use more --venues"
        )
    # events = 2 * pairs * buckets - open drops (an open drop has no CLOSED)
    pairs = max(opens, 1, math.ceil((events + opens * n_live) / (2 * n_buckets)))
    fresh = min(opens, math.ceil(shape.recent / n_live))
    buckets = []
    for index, (day, anchor) in enumerate((d, a) for d in days for a in anchors):
        live = day >= today
        buckets.append(
            BucketSeed(
                bucket_id=bucket_id_for(day, anchor),
                day=day,
                anchor=anchor,
                live=live,
                n0=index * pairs,
                pairs=pairs,
                open_drops=opens if live else 0,
                fresh=fresh if live else 0,
                baseline=baseline if live else 0,
            )
        )
    return SeedPlan(
        now=moment,
        today=today,
        market=settings.market,
        zone=settings.market_timezone,
        prime_anchors=tuple(settings.prime_anchors),
        venues=venues,
        buckets=tuple(buckets),
        mean_age_hours=shape.mean_age_hours,
    )


def stride(space: int) -> int:
    """A multiplier coprime with `space`: i -> i * stride % space visits every slot once."""
    step = 7919
    while math.gcd(step, space) != 1:
        step += 2
    return step


def open_slot_index(bucket: BucketSeed, space: int, i: int) -> int:
    """Slot index of the bucket's i-th open slot (open drops first, then baseline): distinct,
    and scattered over venues and times (mirrors sql.py)."""
    return ((bucket.n0 % space) + i) * stride(space) % space


def slot_for(venues: int, day: dt.date, anchor: str, s: int) -> Slot:
    """The slot with index `s` of a bucket, as the poller would see it (mirrors sql.py)."""
    venue = 1 + s % venues
    start = (
        dt.datetime.combine(day, dt.time.fromisoformat(anchor))
        - dt.timedelta(hours=2)
        + dt.timedelta(minutes=15 * ((s // venues) % TIMES))
    )
    seating = SEATINGS[s // (venues * TIMES)]
    return Slot(slot_id_for(PROVIDER, venue, start, seating), venue, start, seating)


def venue_info(venue_id: int) -> VenueInfo:
    """A seeded venue's details, as the provider would report them (mirrors sql.py)."""
    return VenueInfo(
        venue_id,
        f"Venue {venue_id}",
        NEIGHBORHOODS[venue_id % len(NEIGHBORHOODS)],
        1 + venue_id % 4,
        f"venue-{venue_id}",
        "ny",
    )
