"""The tick loop: keep the live buckets, lease due ones, poll up to `concurrency` at once.

Due-ness and leases live in PostgreSQL, so any number of replicas can run this loop against
one database: a bucket is leased by one replica at a time (`FOR UPDATE SKIP LOCKED`), its next
due time is set when its poll is recorded, and a killed replica's leases expire after
`lease_seconds` (shorter than the poll deadline plus cooldown), so others pick them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import exc as sa_exc

from services.poller import store
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
    async def lease_due(self, limit: int) -> list[store.LeasedBucket]:
        if limit <= 0:
            return []
        settings = self.ctx.settings
        today = self.today()
        async with self.ctx.engine.begin() as conn:
            return await store.lease_due(
                conn,
                owner=self.ctx.owner,
                limit=limit,
                lease_seconds=settings.lease_seconds,
                first_day=today,
                last_day=today + dt.timedelta(days=settings.window_days - 1),
                cutoff_bucket_id=bucket_id_for(today, settings.cutoff_time),
            )

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
            outcomes: list[PollOutcome] = []
            while batch := await self.lease_due(self.ctx.settings.concurrency):
                outcomes += await asyncio.gather(*(poll_bucket(self.ctx, b) for b in batch))
            return outcomes

    # --- the loop -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set, then let in-flight polls finish within the grace period."""
        settings = self.ctx.settings
        while not stop.is_set():
            try:
                with unavailable_as_error():
                    await self.ensure_buckets()
                    free = settings.concurrency - len(self._tasks)
                    for leased in await self.lease_due(free):
                        self._start(leased)
                await self._on_health(True)
            except DatabaseUnavailableError as exc:
                log.error("database unavailable: %s", exc)
                await self._on_health(False)
            self.ctx.metrics.in_flight.set(len(self._tasks))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.tick_seconds)
        await self._drain(settings.shutdown_grace_seconds)

    def _start(self, leased: store.LeasedBucket) -> None:
        task = asyncio.create_task(self._guarded(leased), name=f"poll-{leased.bucket_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, leased: store.LeasedBucket) -> PollOutcome:
        try:
            with unavailable_as_error():
                return await poll_bucket(self.ctx, leased)
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
                async with self.ctx.engine.begin() as conn:
                    for task in still:
                        bucket_id = task.get_name().removeprefix("poll-")
                        await store.release_lease(conn, bucket_id, self.ctx.owner)
            except Exception:  # best effort on the way out: the lease expires by itself
                log.warning("could not release leases on shutdown", exc_info=True)
