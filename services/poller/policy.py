"""Change-rate-aware scheduling: how often to poll each live bucket, and which are due now.

Pure: no database, no asyncio, the clock is an argument. The scheduler feeds it what the
database knows (`services/poller/scheduler.py`); the benchmark drives it in virtual time.

The rule (see docs/architecture.md, Scheduling and replicas): a drop that starts at a random
moment in a bucket polled every `I` seconds waits `I / 2` on average, so the expected detection
delay over all buckets is `sum(lambda_b * I_b / 2)` for change rates `lambda_b`. Minimising it
under the request budget `sum(c_b / I_b) <= R` (a poll of bucket `b` costs `c_b` requests) gives
poll frequencies proportional to `sqrt(lambda_b / c_b)` (the square-root rule of refresh
policies and age-of-information scheduling). But a drop that lives `L < I` is seen only with
probability `L / I`: for the short drops the missed count `lambda_b * (1 - L f_b)` falls
linearly in `f_b` at a slope proportional to `lambda_b`, which favours the busiest buckets more
than the square root does. Minimising `sum(lambda_b * I_b ** p)` (missed or late drops growing
like `I ** p`, `0 < p <= 1`) gives `f_b ~ (lambda_b / c_b) ** ALPHA` with `ALPHA = 1 / (1 + p)`;
the policy uses `ALPHA` = 2/3 (`p` = 1/2), between the mean-delay optimum (1/2) and the
missed-short-drop limit (1, as `p -> 0`), as measured in bench/detection.py. The budget is
split in order:

1. the floor: every bucket at least every `max_interval` (no bucket starves);
2. fresh buckets (no baseline yet) and buckets inside a learned release window, at
   `min_interval`;
3. the rest by `(lambda_b / c_b) ** ALPHA`, clamped to [min_interval, max_interval], its
   scale found by bisection so the total fits what is left.

When the floor alone exceeds the budget, the budget wins (it is the provider's limit): every
interval stretches to the same `sum(c_b) / R` and `Plan.floor_kept` is False.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

FRESH = "fresh"
RELEASE = "release"
CHURNING = "churning"
QUIET = "quiet"
CLASSES = (FRESH, RELEASE, CHURNING, QUIET)
_TIER = {FRESH: 0, RELEASE: 1, CHURNING: 2, QUIET: 2}

# How many seconds of observation the hour-profile prior is worth, as a share of the decay
# time constant: after a quarter of a mean life of watching, a bucket's own events weigh as
# much as the prior.
PRIOR_WEIGHT = 0.25
# Prior rate (changes per second per bucket) when no history is known at all: small, but
# positive, so an unknown market spends its budget evenly instead of leaving it unused.
DEFAULT_PRIOR_PER_SECOND = 0.1 / 60
# The bisection for the frequency rule's scale stops at this relative precision (a
# frequency off by one part in a million is nothing), or after this many halvings.
_BISECTION_TOLERANCE = 1e-6
_BISECTION_STEPS = 60
# The exponent of the frequency rule `f ~ (lambda / c) ** ALPHA` (docs/architecture.md,
# Scheduling and replicas): 0.5 minimises the mean delay of all drops; towards 1 it minimises
# the drops that live shorter than their bucket's interval, missed.
ALPHA = 2 / 3


class WindowLike(Protocol):
    """A learned release window (`services.poller.windows.ReleaseWindow` is one)."""

    @property
    def lead_days(self) -> int: ...
    @property
    def release_minute(self) -> int: ...
    @property
    def time_slots(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Window:
    """A plain release window: released `lead_days` ahead at `release_minute` (market-local
    minute of the day) into the buckets of the anchors `time_slots` (empty: every anchor)."""

    lead_days: int
    release_minute: int
    time_slots: tuple[str, ...] = ()


@dataclass(frozen=True)
class BucketState:
    """What the policy knows of one live bucket.

    `decayed_events` is `sum(exp(-age / tau))` over its recent NEW_DROP and CLOSED events
    (`tau = half_life / ln 2`), `observed_seconds` how long it has been watched. `cost` is the
    requests one poll takes (party sizes x pages, at least the number of party sizes).
    `leased` buckets are in flight somewhere: counted in the budget, never due.
    """

    bucket_id: str
    bucket_date: dt.date
    anchor: str
    cost: int
    last_poll: dt.datetime | None
    decayed_events: float = 0.0
    observed_seconds: float = 0.0
    fresh: bool = False
    leased: bool = False


@dataclass(frozen=True)
class PolicySettings:
    min_interval: float = 1.0
    max_interval: float = 60.0
    budget: float = 5.0  # requests per second for the whole market
    half_life: float = 600.0
    window_before: float = 30.0
    window_after: float = 120.0
    zone: dt.tzinfo = dt.UTC

    def __post_init__(self) -> None:
        if not 0 < self.min_interval <= self.max_interval:
            raise ValueError("need 0 < min_interval <= max_interval")
        if self.budget <= 0 or self.half_life <= 0:
            raise ValueError("budget and half_life must be positive")
        if self.window_before < 0 or self.window_after < 0:
            raise ValueError("release window bounds must not be negative")

    @property
    def tau(self) -> float:
        """The decay time constant (mean life) of the change-rate estimate."""
        return self.half_life / math.log(2)


@dataclass(frozen=True)
class Plan:
    """The schedule at `now`. Intervals in seconds; `due` most urgent first."""

    now: dt.datetime
    intervals: dict[str, float]
    next_due: dict[str, dt.datetime]
    due: list[str]
    classes: dict[str, str]
    rates: dict[str, float]  # estimated changes per second
    costs: dict[str, int]
    planned_rate: float  # requests per second the intervals add up to
    budget: float
    floor_kept: bool  # False: the budget cannot keep every bucket within max_interval
    expected_delay: float  # sum(lambda I / 2) / sum(lambda), seconds
    wake_at: dt.datetime | None = None  # the earliest next due time of the rest
    release_ends: dict[str, dt.datetime] = field(default_factory=dict)


def decay_weight(age_seconds: float, half_life: float) -> float:
    """The weight of one event `age_seconds` old: what the database statement sums."""
    return math.exp(-max(0.0, age_seconds) * math.log(2) / half_life)


def estimate_rate(
    decayed_events: float, observed_seconds: float, prior: float, settings: PolicySettings
) -> float:
    """Changes per second: a Gamma-Poisson posterior mean blending the bucket's decayed event
    count with the hour-profile prior, so a bucket watched briefly (or polled rarely) is not
    taken to be quiet just because it showed nothing yet."""
    tau = settings.tau
    exposure = tau * (1.0 - math.exp(-max(0.0, observed_seconds) / tau))
    weight = PRIOR_WEIGHT * tau
    return (max(0.0, decayed_events) + prior * weight) / (exposure + weight)


def hour_prior(profile: Mapping[int, float], now: dt.datetime, zone: dt.tzinfo) -> float:
    """The prior change rate per bucket at the market-local hour of `now` (changes per second)."""
    if not profile:
        return DEFAULT_PRIOR_PER_SECOND
    rate = profile.get(now.astimezone(zone).hour)
    if rate is None:
        rate = sum(profile.values()) / len(profile)
    return max(0.0, rate)


_WindowKey = tuple[tuple[int, int, tuple[str, ...]], ...]


def release_moments(
    bucket: BucketState, windows: Iterable[WindowLike], zone: dt.tzinfo
) -> list[dt.datetime]:
    """When the learned windows release into this bucket (aware datetimes, sorted)."""
    key = tuple((w.lead_days, w.release_minute, tuple(w.time_slots)) for w in windows)
    return list(_moments(bucket.bucket_date, bucket.anchor, key, zone))


@functools.lru_cache(maxsize=4096)
def _moments(
    bucket_date: dt.date, anchor: str, windows: _WindowKey, zone: dt.tzinfo
) -> tuple[dt.datetime, ...]:
    """`release_moments`, cached: a plan asks it for every bucket, and the windows change once
    a minute at most, the live buckets once a day."""
    moments = set()
    for lead_days, minute, time_slots in windows:
        if time_slots and anchor not in time_slots:
            continue
        if not 0 <= minute < 24 * 60:
            continue  # not a time of day: nothing to poll for
        day = bucket_date - dt.timedelta(days=lead_days)
        local = dt.datetime.combine(day, dt.time(minute // 60, minute % 60))
        moments.add(local.replace(tzinfo=zone))
    return tuple(sorted(moments))


def _release_state(
    moments: Sequence[dt.datetime], now: dt.datetime, s: PolicySettings
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(end of the window `now` is in, start of the next window) for one bucket."""
    before, after = dt.timedelta(seconds=s.window_before), dt.timedelta(seconds=s.window_after)
    inside, upcoming = None, None
    for moment in moments:
        if moment - before <= now <= moment + after:
            inside = max(inside, moment + after) if inside else moment + after
        elif now < moment - before and upcoming is None:
            upcoming = moment - before
    return inside, upcoming


def _fit(
    weights: Mapping[str, float], costs: Mapping[str, int], lo: float, hi: float, spend: float
) -> dict[str, float]:
    """Frequencies `clamp(k * w_b, lo, hi)` with the largest `k` whose cost fits `spend`
    (requests per second, the floor `lo` included)."""

    def cost_at(k: float) -> float:
        return sum(costs[b] * min(hi, max(lo, k * w)) for b, w in weights.items())

    positive = [w for w in weights.values() if w > 0]
    if not positive or cost_at(0.0) >= spend:
        return dict.fromkeys(weights, lo)
    top = hi / min(positive)
    if cost_at(top) <= spend:
        k = top
    else:
        low_k, high_k = 0.0, top
        for _ in range(_BISECTION_STEPS):
            if high_k - low_k <= _BISECTION_TOLERANCE * high_k:
                break
            mid = (low_k + high_k) / 2
            low_k, high_k = (mid, high_k) if cost_at(mid) <= spend else (low_k, mid)
        k = low_k
    return {b: min(hi, max(lo, k * w)) for b, w in weights.items()}


def plan(
    buckets: Sequence[BucketState],
    now: dt.datetime,
    settings: PolicySettings,
    profile: Mapping[int, float] | None = None,
    windows: Sequence[WindowLike] = (),
) -> Plan:
    """Intervals for every bucket within the budget, and the buckets due at `now`."""
    s = settings
    prior = hour_prior(profile or {}, now, s.zone)
    costs = {b.bucket_id: max(1, b.cost) for b in buckets}
    rates = {
        b.bucket_id: estimate_rate(b.decayed_events, b.observed_seconds, prior, s) for b in buckets
    }
    key = tuple((w.lead_days, w.release_minute, tuple(w.time_slots)) for w in windows)
    release: dict[str, tuple[dt.datetime | None, dt.datetime | None]] = {
        b.bucket_id: _release_state(_moments(b.bucket_date, b.anchor, key, s.zone), now, s)
        for b in buckets
    }
    classes: dict[str, str] = {}
    for b in buckets:
        if b.fresh:
            classes[b.bucket_id] = FRESH
        elif release[b.bucket_id][0] is not None:
            classes[b.bucket_id] = RELEASE
        else:
            classes[b.bucket_id] = CHURNING if rates[b.bucket_id] > prior else QUIET

    lo, hi = 1.0 / s.max_interval, 1.0 / s.min_interval
    total_cost = sum(costs.values())
    floor_kept = total_cost * lo <= s.budget
    freqs: dict[str, float] = {}
    if not floor_kept:
        freqs = dict.fromkeys(costs, s.budget / total_cost)
    else:
        left = s.budget - total_cost * lo
        first = [bid for bid, c in classes.items() if c in (FRESH, RELEASE)]
        extra = sum(costs[bid] for bid in first) * (hi - lo)
        share = 1.0 if extra <= left else left / extra
        for bid in first:
            freqs[bid] = lo + share * (hi - lo)
        left -= min(extra, left)
        rest = {bid: (rates[bid] / costs[bid]) ** ALPHA for bid in costs if bid not in freqs}
        rest_floor = sum(costs[bid] for bid in rest) * lo
        freqs.update(_fit(rest, costs, lo, hi, left + rest_floor))

    intervals = {b: 1.0 / f for b, f in freqs.items()}
    next_due: dict[str, dt.datetime] = {}
    for b in buckets:
        bid = b.bucket_id
        if b.last_poll is None:
            next_due[bid] = now
            continue
        due_at = b.last_poll + dt.timedelta(seconds=intervals[bid])
        upcoming = release[bid][1]
        if upcoming is not None and b.last_poll < upcoming < due_at:
            due_at = upcoming  # the first poll of a window lands on its start
        next_due[bid] = due_at

    never = {b.bucket_id for b in buckets if b.last_poll is None}

    def urgency(bid: str) -> tuple[int, float, str]:
        overdue = (
            math.inf if bid in never else (now - next_due[bid]).total_seconds() / intervals[bid]
        )
        return (_TIER[classes[bid]], -overdue, bid)

    free = [b.bucket_id for b in buckets if not b.leased]
    due = sorted((b for b in free if next_due[b] <= now), key=urgency)
    later = [next_due[b] for b in free if next_due[b] > now]
    total_rate = sum(rates.values())
    delay = (
        sum(rates[b] * intervals[b] / 2 for b in rates) / total_rate
        if total_rate > 0
        else (sum(intervals.values()) / 2 / len(intervals) if intervals else 0.0)
    )
    return Plan(
        now=now,
        intervals=intervals,
        next_due=next_due,
        due=due,
        classes=classes,
        rates=rates,
        costs=costs,
        planned_rate=sum(costs[b] * freqs[b] for b in freqs),
        budget=s.budget,
        floor_kept=floor_kept,
        expected_delay=delay,
        wake_at=min(later) if later else None,
        release_ends={b: end for b, (end, _) in release.items() if end is not None},
    )
