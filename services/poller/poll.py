"""One poll of one bucket: fetch outside any transaction, judge, then write atomically.

A fetch that failed, was partial, or whose every request kind looks blocked changes nothing but
the bucket's bookkeeping (outcome, holds, next due time): the snapshot stays, no event is
written. Otherwise the healthy kinds' answer is written (held kinds keep their snapshot) in one
transaction guarded by the lease and snapshot version, so a crash at any point either commits
the whole poll or none of it, and a concurrent writer is detected instead of merged.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.poller import store
from services.poller.errors import FetchError
from services.poller.judge import Judgement, Thresholds, judge
from services.poller.metrics import PollerMetrics
from services.poller.provider import BucketSpec, Provider
from services.poller.settings import PollerSettings
from services.poller.store import LeasedBucket, LeaseLostError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollOutcome:
    bucket_id: str
    outcome: str
    applied: bool
    new_drops: int = 0
    closed: int = 0
    open_slots: int = 0


@dataclass
class PollContext:
    """What every poll of a replica shares."""

    settings: PollerSettings
    engine: AsyncEngine
    provider: Provider
    metrics: PollerMetrics
    owner: str
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    @property
    def thresholds(self) -> Thresholds:
        s = self.settings
        return Thresholds(
            min_previous=s.soft_block_min_previous,
            shrink_ratio=s.soft_block_shrink_ratio,
            sellout_confirm_seconds=s.sellout_confirm_seconds,
            sellout_confirm_polls=s.sellout_confirm_polls,
        )

    def spec_for(self, leased: LeasedBucket) -> BucketSpec:
        return BucketSpec(
            bucket_id=leased.bucket_id,
            day=leased.bucket_date,
            anchor=dt.time.fromisoformat(leased.time_slot),
            party_sizes=self.settings.party_sizes,
            window=dt.timedelta(hours=self.settings.search_window_hours),
            anchors=self.settings.anchor_times,
        )


async def poll_bucket(
    ctx: PollContext, leased: LeasedBucket, interval: float | None = None
) -> PollOutcome:
    """Poll once; the bucket's `next_poll_at` becomes the poll's time plus `interval` (the
    adaptive schedule's plan for it) or, without one, `cooldown_seconds`."""
    started = time.monotonic()
    wait = dt.timedelta(seconds=interval if interval is not None else ctx.settings.cooldown_seconds)
    outcome = await _poll(ctx, leased, started + ctx.settings.poll_deadline_seconds, wait)
    ctx.metrics.poll_duration.labels(outcome.outcome).observe(time.monotonic() - started)
    ctx.metrics.fetch_outcomes.labels(outcome.outcome).inc()
    return outcome


async def _poll(
    ctx: PollContext, leased: LeasedBucket, deadline: float, wait: dt.timedelta
) -> PollOutcome:
    settings, spec = ctx.settings, ctx.spec_for(leased)
    fetch_started = time.monotonic()
    try:
        fetch = await ctx.provider.fetch_bucket(spec, deadline)
    except FetchError as exc:
        log.warning("bucket %s: fetch failed (%s): %s", leased.bucket_id, exc.reason, exc)
        await _record_unhealthy(ctx, leased, exc.reason, leased.held, wait)
        return PollOutcome(leased.bucket_id, exc.reason, applied=False)

    now = ctx.clock()
    verdict = judge(
        fetch.kind_counts,
        leased.kind_counts,
        leased.held,
        now=now,
        evidence_at=leased.evidence_at,
        thresholds=ctx.thresholds,
    )
    _observe_kinds(ctx, leased, verdict)
    if not verdict.apply:
        log.warning(
            "bucket %s: every request kind held (%s): %s after %s",
            leased.bucket_id,
            verdict.outcome,
            fetch.kind_counts,
            leased.kind_counts,
        )
        await _record_unhealthy(ctx, leased, verdict.outcome, verdict.held, wait, now)
        return PollOutcome(leased.bucket_id, verdict.outcome, applied=False)

    try:
        async with ctx.engine.begin() as conn:
            await store.check_lease(conn, leased, ctx.owner)
            await store.upsert_venues(conn, fetch, ctx.provider.name)
            result = await store.write_healthy_poll(
                conn,
                leased,
                fetch,
                market=settings.market,
                provider=ctx.provider.name,
                prime=leased.time_slot in settings.prime_anchors,
                outcome=verdict.outcome,
                now=now,
                next_poll_at=now + wait,
                judgement=verdict,
                share=spec.share,
                fetch_seconds=time.monotonic() - fetch_started,
            )
    except LeaseLostError as exc:
        ctx.metrics.lease_conflicts.inc()
        log.warning("bucket %s: poll discarded: %s", leased.bucket_id, exc)
        return PollOutcome(leased.bucket_id, "lease_conflict", applied=False)

    ctx.metrics.events_written.labels("NEW_DROP").inc(result.new_drops)
    ctx.metrics.events_written.labels("CLOSED").inc(result.closed)
    ctx.metrics.events_written.labels("SIZE_CHANGE").inc(result.size_changes)
    ctx.metrics.last_healthy_poll.labels(leased.bucket_id).set(now.timestamp())
    if result.new_drops or result.closed or result.size_changes:
        log.info(
            "bucket %s: %d new drops, %d closed, %d party-size changes, %d open",
            leased.bucket_id,
            result.new_drops,
            result.closed,
            result.size_changes,
            result.open_slots,
        )
    return PollOutcome(
        leased.bucket_id,
        verdict.outcome,
        applied=True,
        new_drops=result.new_drops,
        closed=result.closed,
        open_slots=result.open_slots,
    )


def _observe_kinds(ctx: PollContext, leased: LeasedBucket, verdict: Judgement) -> None:
    """Each kind's verdict, and how many kinds of the bucket are held now (the block state)."""
    for verdict_name in verdict.kinds.values():
        ctx.metrics.kind_verdicts.labels(verdict_name).inc()
    ctx.metrics.held_kinds.labels(leased.bucket_id).set(len(verdict.held))


async def _record_unhealthy(
    ctx: PollContext,
    leased: LeasedBucket,
    outcome: str,
    held: dict[str, Any],
    wait: dt.timedelta,
    now: dt.datetime | None = None,
) -> None:
    now = now or ctx.clock()
    async with ctx.engine.begin() as conn:
        await store.record_unhealthy(
            conn,
            leased,
            ctx.owner,
            outcome=outcome,
            held=held,
            now=now,
            next_poll_at=now + wait,
        )
