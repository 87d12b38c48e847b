"""The tick loop: keep the live buckets, lease due ones, poll up to `concurrency` at once.

Due-ness and leases live in PostgreSQL, so any number of replicas can run this loop against
one database: a bucket is leased by one replica at a time (`FOR UPDATE SKIP LOCKED`) and a
killed replica's leases expire after `lease_seconds`, so others pick them up. Which buckets
are due comes from the schedule: `fixed` polls each bucket `cooldown_seconds` after its last
poll (`next_poll_at`), every `tick_seconds`; `adaptive` (the default) asks the policy
(`adaptive.py`, `policy.py`) each tick and sleeps until the next bucket falls due.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Collection

from sqlalchemy import exc as sa_exc

from services.poller import store
from services.poller.adaptive import AdaptivePlanner, LiveRange
from services.poller.poll import PollContext, PollOutcome, poll_bucket
from shared.db.buckets import (
    bucket_id_for,
    ensure_configured_buckets,
    ensure_live_buckets,
    live_days,
    market_today,
)
from shared.db.engine import unavailable_as_error
from shared.db.partitions import list_partitions
from shared.errors import DatabaseUnavailableError

log = logging.getLogger(__name__)

ENSURE_EVERY_SECONDS = 60.0
# Adaptive mode: the shortest sleep between ticks (a due bucket another replica took, or one
# whose due time the clock has not quite reached).
MIN_TICK_SECONDS = 0.05
_INSUFFICIENT_PRIVILEGE = "42501"


async def _ignore_health(_serving: bool) -> None:
    return None


class Scheduler:
    def __init__(
        self,
        ctx: PollContext,
        on_health: Callable[[bool], Awaitable[None]] | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.ctx = ctx
        self._on_health = on_health or _ignore_health
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._tasks: set[asyncio.Task[PollOutcome]] = set()
        self._ensured_at = -ENSURE_EVERY_SECONDS
        self._ensured_day: dt.date | None = None
        self._finished = asyncio.Event()
        self._planner = (
            AdaptivePlanner(ctx, lambda: self.ctx.clock())
            if ctx.settings.schedule == "adaptive"
            else None
        )

    # --- the live window ----------------------------------------------------------------
    def today(self) -> dt.date:
        return market_today(self.ctx.settings.zone, self._clock())

    async def ensure_buckets(self, force: bool = False) -> int:
        """Create missing live buckets (cheap; done at start, every minute and at midnight)."""
        today = self.today()
        recent = time.monotonic() - self._ensured_at < ENSURE_EVERY_SECONDS
        if not force and today == self._ensured_day and recent:
            return 0
        settings = self.ctx.settings
        try:
            async with self.ctx.engine.begin() as conn:
                created = await conn.run_sync(
                    lambda sync_conn: ensure_configured_buckets(sync_conn, settings, today)
                )
        except sa_exc.ProgrammingError as exc:
            if getattr(exc.orig, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
                raise
            created = await self._ensure_without_ddl(today)
        self._ensured_day, self._ensured_at = today, time.monotonic()
        live = {
            bucket_id_for(day, anchor)
            for day in live_days(today, settings.window_days)
            for anchor in settings.anchors
        }
        self.ctx.metrics.forget_buckets(live)
        if created:
            log.info("created %d live buckets", created)
        return created

    async def _ensure_without_ddl(self, today: dt.date) -> int:
        """Under its own role (deploy/sql/roles.sql) the poller may not create a day
        partition: create the buckets of the days that have one (maintenance creates the
        rest on its next run)."""
        settings = self.ctx.settings
        async with self.ctx.engine.begin() as conn:
            have = set(await conn.run_sync(list_partitions))
            days = 0
            while days < settings.window_days and today + dt.timedelta(days=days) in have:
                days += 1
            log.warning(
                "no privilege to create day partitions: buckets for %d of %d days (the daily "
                "maintenance run creates the others)",
                days,
                settings.window_days,
            )
            if not days:
                return 0
            return await conn.run_sync(
                lambda sync_conn: ensure_live_buckets(
                    sync_conn,
                    market=settings.market,
                    today=today,
                    window_days=days,
                    anchors=settings.anchors,
                    cutoff_time=settings.cutoff_time,
                )
            )

    # --- leasing ------------------------------------------------------------------------
    def live_range(self) -> LiveRange:
        today = self.today()
        return LiveRange(
            first=today,
            last=today + dt.timedelta(days=self.ctx.settings.window_days - 1),
            cutoff=bucket_id_for(today, self.ctx.settings.cutoff_time),
        )

    async def lease_due(self, limit: int, skip: Collection[str] = ()) -> list[store.LeasedBucket]:
        """Fixed schedule: up to `limit` buckets whose `next_poll_at` has passed, none of
        `skip`."""
        if limit <= 0:
            return []
        live = self.live_range()
        async with self.ctx.engine.begin() as conn:
            return await store.lease_due(
                conn,
                owner=self.ctx.owner,
                limit=limit,
                lease_seconds=self.ctx.settings.lease_seconds,
                first_day=live.first,
                last_day=live.last,
                cutoff_bucket_id=live.cutoff,
                skip=skip,
            )

    async def start_planned(self, planner: AdaptivePlanner, free: int) -> float:
        """Adaptive schedule: plan, lease and start up to `free` due buckets (two statements
        besides the policy's periodic reads); return how long to sleep before the next tick."""
        plan, chosen = await planner.tick(self.live_range(), free)
        for c in chosen:
            self.ctx.metrics.scheduled_requests.labels(c.bucket_class).inc(c.cost)
            self._start(c.leased, c.interval)
        tick = self.ctx.settings.tick_seconds
        if len(chosen) < min(free, len(plan.due)):
            return MIN_TICK_SECONDS  # taken or polled by another replica meanwhile: re-plan
        if plan.wake_at is None or len(plan.due) > len(chosen):
            return tick  # nothing else planned, or all slots busy: a finishing poll wakes us
        wait = (plan.wake_at - plan.now).total_seconds()
        return min(tick, max(MIN_TICK_SECONDS, wait))

    # --- one pass, for `dropwatch poll --once` --------------------------------------------
    async def poll_once(self, bucket_id: str | None = None) -> list[PollOutcome]:
        """Poll every due bucket (or just `bucket_id`, ignoring its cooldown), then return."""
        with unavailable_as_error():
            await self.ensure_buckets(force=True)
            if bucket_id is not None:
                async with self.ctx.engine.begin() as conn:
                    leased = await store.lease_one(
                        conn,
                        owner=self.ctx.owner,
                        bucket_id=bucket_id,
                        lease_seconds=self.ctx.settings.lease_seconds,
                    )
                if leased is None:
                    return []
                return [await poll_bucket(self.ctx, leased)]
            # Each bucket once: one whose fetch outlasted its cooldown is due again at once.
            outcomes: list[PollOutcome] = []
            polled: set[str] = set()
            while batch := await self.lease_due(self.ctx.settings.concurrency, skip=polled):
                outcomes += await asyncio.gather(*(poll_bucket(self.ctx, b) for b in batch))
                polled.update(b.bucket_id for b in batch)
            return outcomes

    async def _release(self, bucket_ids: list[str]) -> None:
        """Give up this replica's leases of `bucket_ids` (others may poll them at once)."""
        if bucket_ids:
            async with self.ctx.engine.begin() as conn:
                for bucket_id in bucket_ids:
                    await store.release_lease(conn, bucket_id, self.ctx.owner)

    # --- the loop -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set, then let in-flight polls finish within the grace period."""
        settings = self.ctx.settings
        while not stop.is_set():
            wait = settings.tick_seconds
            self._finished.clear()
            try:
                with unavailable_as_error():
                    await self.ensure_buckets()
                    free = settings.concurrency - len(self._tasks)
                    if self._planner is not None:
                        wait = await self.start_planned(self._planner, free)
                    else:
                        for leased in await self.lease_due(free):
                            self._start(leased)
                await self._on_health(True)
            except DatabaseUnavailableError as exc:
                log.error("database unavailable: %s", exc)
                await self._on_health(False)
            self.ctx.metrics.in_flight.set(len(self._tasks))
            await self._sleep(stop, wait)
        await self._drain(settings.shutdown_grace_seconds)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        """Until `stop`, the timeout, or (adaptive) a poll finishing: its next due time and
        its concurrency slot are news for the plan."""
        waits = [asyncio.ensure_future(stop.wait())]
        if self._planner is not None:
            waits.append(asyncio.ensure_future(self._finished.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def _start(self, leased: store.LeasedBucket, interval: float | None = None) -> None:
        task = asyncio.create_task(self._guarded(leased, interval), name=f"poll-{leased.bucket_id}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[PollOutcome]) -> None:
        self._tasks.discard(task)
        self._finished.set()

    async def _guarded(
        self, leased: store.LeasedBucket, interval: float | None = None
    ) -> PollOutcome:
        try:
            with unavailable_as_error():
                return await poll_bucket(self.ctx, leased, interval)
        except DatabaseUnavailableError as exc:
            log.error("bucket %s: database unavailable: %s", leased.bucket_id, exc)
            await self._on_health(False)
            return PollOutcome(leased.bucket_id, "database_unavailable", applied=False)
        except Exception:  # a bug must not kill the loop; the lease expires and others retry
            log.exception("bucket %s: poll failed", leased.bucket_id)
            self.ctx.metrics.fetch_outcomes.labels("error").inc()
            return PollOutcome(leased.bucket_id, "error", applied=False)

    async def _drain(self, grace: float) -> None:
        """Finish in-flight polls; cancel what outlives the grace (its transaction rolls back)."""
        if not self._tasks:
            return
        pending = set(self._tasks)
        log.info("stopping: waiting up to %.0fs for %d polls", grace, len(pending))
        _done, still = await asyncio.wait(pending, timeout=grace)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still, timeout=5)
            # Their leases would expire anyway; release them now so others start sooner.
            try:
                await self._release([task.get_name().removeprefix("poll-") for task in still])
            except Exception:  # best effort on the way out: the lease expires by itself
                log.warning("could not release leases on shutdown", exc_info=True)
