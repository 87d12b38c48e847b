"""Change-rate-aware scheduling against the database (`DROPWATCH_SCHEDULE=adaptive`).

What the policy (`policy.py`) needs is read set-based from PostgreSQL, so every replica plans
from the same knowledge and a restart loses nothing:

- every few seconds, one statement: each live bucket's decayed count of recent NEW_DROP and
  CLOSED events (`store.read_change_rates`);
- every minute or ten, one statement each: the pages each bucket's open state needs
  (`store.read_extra_pages`), the learned release windows (`windows.py`) and the market-local
  hour profile of the last days' events (`store.read_hour_profile`);
- every tick, one statement reads the live buckets' state and one leases the chosen ones.

Each replica plans the whole market against the whole budget; the leases split the due
buckets between replicas, and the shared token bucket (`budget.py`) holds the request rate.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from services.poller import policy, store
from services.poller.poll import PollContext
from services.poller.windows import ReleaseWindow, load_release_windows
from shared.db.engine import unavailable_as_error

log = logging.getLogger(__name__)

RATES_EVERY_SECONDS = 5.0
PROFILE_EVERY_SECONDS = 600.0
WINDOWS_EVERY_SECONDS = 60.0
PAGES_EVERY_SECONDS = 60.0
PROFILE_DAYS = 7
# Events older than this many half-lives weigh under 2% and are left out of the sum.
HORIZON_HALF_LIVES = 6


@dataclass(frozen=True)
class LiveRange:
    """The live buckets: dates `first`..`last`, ids from `cutoff` on."""

    first: dt.date
    last: dt.date
    cutoff: str


@dataclass(frozen=True)
class Chosen:
    """A bucket leased for a poll, with the interval and class the plan gave it."""

    leased: store.LeasedBucket
    interval: float
    bucket_class: str
    cost: int


@dataclass
class Knowledge:
    """What the slower statements learned, with when (monotonic) each was refreshed."""

    decayed: dict[str, float] = field(default_factory=dict)
    extra_pages: dict[str, int] = field(default_factory=dict)
    floor_id: int = 0
    profile: dict[int, float] = field(default_factory=dict)
    windows: list[ReleaseWindow] = field(default_factory=list)
    rates_at: float = -math.inf
    profile_at: float = -math.inf
    windows_at: float = -math.inf
    pages_at: float = -math.inf


class AdaptivePlanner:
    def __init__(self, ctx: PollContext, clock: Callable[[], dt.datetime]) -> None:
        self.ctx = ctx
        self._clock = clock
        s = ctx.settings
        self.settings = policy.PolicySettings(
            min_interval=s.min_interval_seconds,
            max_interval=s.max_interval_seconds,
            budget=s.requests_per_second,
            half_life=s.change_rate_half_life_seconds,
            window_before=s.release_window_before_seconds,
            window_after=s.release_window_after_seconds,
            zone=s.zone,
        )
        self.known = Knowledge()
        self._floor_warned = False
        ctx.metrics.request_budget.set(s.requests_per_second)

    # --- knowledge, refreshed on its own periods --------------------------------------------
    async def refresh(self, live: LiveRange, live_count: int) -> None:
        """Run whichever slow statement is due (each in its own short transaction)."""
        now, k = time.monotonic(), self.known
        if now - k.rates_at >= RATES_EVERY_SECONDS:
            k.rates_at = now
            await self._kept("change rates", self._read_rates(live))
        if now - k.pages_at >= PAGES_EVERY_SECONDS:
            k.pages_at = now
            await self._kept("pages", self._read_pages(live))
        if now - k.profile_at >= PROFILE_EVERY_SECONDS:
            k.profile_at = now
            await self._kept("hour profile", self._read_profile(live, live_count))
        if now - k.windows_at >= WINDOWS_EVERY_SECONDS:
            k.windows_at = now
            await self._kept("release windows", self._read_windows())

    async def _kept(self, what: str, read: Coroutine[Any, Any, None]) -> None:
        """A slow read that fails (a statement timeout, a lock, a table not migrated yet)
        keeps what was known and is tried again next period; only a lost database stops the
        tick (`DatabaseUnavailableError`: the loop reports the replica unhealthy)."""
        try:
            with unavailable_as_error():
                await read
        except sa_exc.DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            log.warning("schedule: %s not refreshed, keeping the last: %s", what, reason)

    async def _read_rates(self, live: LiveRange) -> None:
        k = self.known
        async with self.ctx.engine.begin() as conn:
            rates = await store.read_change_rates(
                conn,
                first_day=live.first,
                last_day=live.last,
                cutoff_bucket_id=live.cutoff,
                floor_id=k.floor_id,
                tau=self.settings.tau,
                horizon_seconds=HORIZON_HALF_LIVES * self.settings.half_life,
            )
        k.decayed, k.floor_id = rates.decayed, rates.floor_id

    async def _read_pages(self, live: LiveRange) -> None:
        async with self.ctx.engine.begin() as conn:
            self.known.extra_pages = await store.read_extra_pages(
                conn,
                first_day=live.first,
                last_day=live.last,
                cutoff_bucket_id=live.cutoff,
                per_page=self.ctx.settings.per_page,
            )

    async def _read_profile(self, live: LiveRange, live_count: int) -> None:
        s = self.ctx.settings
        async with self.ctx.engine.begin() as conn:
            counts, days = await store.read_hour_profile(
                conn,
                market=s.market,
                zone=s.market_timezone,
                days=PROFILE_DAYS,
                since_day=live.first - dt.timedelta(days=PROFILE_DAYS),
            )
        per_bucket_hour = max(1, days) * 3600.0 * max(1, live_count)
        profile = {hour: n / per_bucket_hour for hour, n in counts.items()}
        if counts:  # hours without events are quiet hours, not unknown ones
            profile = {h: profile.get(h, 0.0) for h in range(24)}
        self.known.profile = profile

    async def _read_windows(self) -> None:
        async with self.ctx.engine.begin() as conn:
            self.known.windows = await load_release_windows(conn, self.ctx.settings.market)

    # --- one tick -----------------------------------------------------------------------------
    def plan(self, rows: Sequence[store.ScheduleRow], now: dt.datetime) -> policy.Plan:
        s, k = self.ctx.settings, self.known
        sizes = len(s.party_sizes)
        buckets = [
            policy.BucketState(
                bucket_id=r.bucket_id,
                bucket_date=r.bucket_date,
                anchor=r.time_slot,
                cost=sizes + k.extra_pages.get(r.bucket_id, 0),
                last_poll=r.last_poll,
                decayed_events=k.decayed.get(r.bucket_id, 0.0),
                observed_seconds=r.watched_seconds,
                fresh=r.fresh,
                leased=r.leased,
            )
            for r in rows
        ]
        result = policy.plan(buckets, now, self.settings, k.profile, k.windows)
        self._observe(result)
        return result

    def _observe(self, p: policy.Plan) -> None:
        m = self.ctx.metrics
        for bucket_id, interval in p.intervals.items():
            m.poll_interval.labels(bucket_id).set(interval)
        m.planned_requests.set(p.planned_rate)
        m.expected_delay.set(p.expected_delay)
        m.max_interval_kept.set(1 if p.floor_kept else 0)
        if not p.floor_kept and not self._floor_warned:
            log.warning(
                "the request budget (%.2f/s) cannot poll all %d live buckets every %.0f s: "
                "every interval is stretched to %.0f s",
                p.budget,
                len(p.intervals),
                self.settings.max_interval,
                max(p.intervals.values()),
            )
        self._floor_warned = not p.floor_kept

    async def tick(self, live: LiveRange, limit: int) -> tuple[policy.Plan, list[Chosen]]:
        """Read the live buckets, plan, lease up to `limit` due ones (two statements)."""
        async with self.ctx.engine.begin() as conn:
            rows = await store.read_schedule_state(
                conn,
                first_day=live.first,
                last_day=live.last,
                cutoff_bucket_id=live.cutoff,
                now=self._clock(),
            )
        await self.refresh(live, len(rows))
        now = self._clock()
        result = self.plan(rows, now)
        if limit <= 0 or not result.due:
            return result, []
        by_id = {r.bucket_id: r for r in rows}
        wanted = result.due[:limit]
        async with self.ctx.engine.begin() as conn:
            leased = await self._lease(conn, [(b, by_id[b].last_polled_at) for b in wanted])
        order = {b: i for i, b in enumerate(wanted)}
        leased.sort(key=lambda lb: order[lb.bucket_id])
        return result, [
            Chosen(
                lb,
                result.intervals[lb.bucket_id],
                result.classes[lb.bucket_id],
                result.costs[lb.bucket_id],
            )
            for lb in leased
        ]

    async def _lease(
        self, conn: AsyncConnection, wanted: list[tuple[str, dt.datetime | None]]
    ) -> list[store.LeasedBucket]:
        return await store.lease_chosen(
            conn,
            owner=self.ctx.owner,
            lease_seconds=self.ctx.settings.lease_seconds,
            chosen=wanted,
        )
