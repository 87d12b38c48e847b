"""Series the poller exports from the database rather than from its own polls.

A gauge set only after a healthy poll exports nothing in a replica restarted while the
provider is failing (or freshly installed with bad credentials, or for a new bucket), and the
stale-bucket alert then resolves instead of firing. So every `REFRESH_SECONDS` each replica
reads every live bucket's last healthy poll (its creation time when there was none) and the
last successful maintenance run (from `maintenance_runs`, so that alert does not depend on the
Pushgateway's memory). While the database is unreachable the last values stay exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from services.poller.poll import PollContext
from shared.db.buckets import bucket_id_for, market_today

log = logging.getLogger(__name__)

REFRESH_SECONDS = 30.0
FIRST_REFRESH_SECONDS = 2.0  # until a live bucket exists (the scheduler creates them at start)
MAINTENANCE_SUCCESS = "dropwatch_maintenance_recorded_last_success_timestamp_seconds"

# The buckets `lease_due` may lease (the same window and cutoff).
_LIVE_BUCKETS = text(
    """
    SELECT bucket_id, coalesce(last_healthy_poll_at, created_at) AS healthy_at
    FROM discovery_buckets
    WHERE bucket_date BETWEEN :first AND :last AND bucket_id >= :cutoff
    """
)
# The last success; before any, when recording began (the `installed` row of migration 0009).
_MAINTENANCE_SUCCESS = text(
    """
    SELECT coalesce(max(finished_at) FILTER (WHERE outcome = 'succeeded'), min(started_at))
    FROM maintenance_runs
    """
)


class MaintenanceSuccess(Collector):
    """Exports nothing until a value was read: a zero would read as a run 56 years ago."""

    def __init__(self) -> None:
        self.value: float | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            MAINTENANCE_SUCCESS,
            "Unix time the last successful maintenance run finished, as recorded in the "
            "database (before any: when recording began).",
        )
        if self.value is not None:
            family.add_metric([], self.value)
        yield family


class DatabaseSeries:
    def __init__(self, ctx: PollContext) -> None:
        self.ctx = ctx
        self.maintenance = MaintenanceSuccess()
        self.buckets = 0
        ctx.metrics.registry.register(self.maintenance)

    async def refresh(self) -> None:
        settings = self.ctx.settings
        today = market_today(settings.zone, self.ctx.clock())
        window = {
            "first": today,
            "last": today + dt.timedelta(days=settings.window_days - 1),
            "cutoff": bucket_id_for(today, settings.cutoff_time),
        }
        async with self.ctx.engine.connect() as conn:
            buckets = (await conn.execute(_LIVE_BUCKETS, window)).all()
        gauge = self.ctx.metrics.last_healthy_poll
        live = {row.bucket_id: row.healthy_at for row in buckets}
        for bucket_id, healthy_at in live.items():
            gauge.labels(bucket_id).set(healthy_at.timestamp())
        self.ctx.metrics.forget_buckets(set(live))
        self.buckets = len(live)
        # Read apart from the buckets: a failure here must not cost the stale-bucket series.
        async with self.ctx.engine.connect() as conn:
            success = (await conn.execute(_MAINTENANCE_SUCCESS)).scalar_one()
        if success is not None:
            self.maintenance.value = success.timestamp()

    async def run(self, stop: asyncio.Event, every: float = REFRESH_SECONDS) -> None:
        """Refresh until `stop` is set; a failed refresh keeps the last values."""
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # a monitoring side loop must outlive any error
                log.warning("could not read the exported series from the database: %s", exc)
            pause = every if self.buckets else min(every, FIRST_REFRESH_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)
