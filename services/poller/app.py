"""Assemble and run a poller replica: metrics, health, provider, scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

import grpc

from services.poller.budget import make_budget
from services.poller.exported import DatabaseSeries
from services.poller.metrics import PollerMetrics
from services.poller.poll import PollContext, PollOutcome
from services.poller.resy import ResyProvider
from services.poller.scheduler import Scheduler
from services.poller.settings import PollerSettings
from shared.db.engine import make_async_engine
from shared.health import Health
from shared.metrics_http import grpc_address, serve_metrics

log = logging.getLogger(__name__)

HEALTH_SERVICE = "dropwatch.poller"


def replica_id() -> str:
    """Unique per process: host, pid and a random suffix (pids repeat across pods)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def build_context(settings: PollerSettings, database_url: str) -> PollContext:
    """The budget is the market's, shared through PostgreSQL by every replica (budget.py)."""
    metrics = PollerMetrics()
    engine = make_async_engine(settings, name="poller", metrics=metrics.pool, url=database_url)
    budget = make_budget(settings, engine)
    metrics.track_budget(budget.counters, budget.rate)
    provider = ResyProvider(
        settings,
        budget,
        observe=lambda status_class: metrics.upstream_requests.labels(status_class).inc(),
    )
    return PollContext(settings, engine, provider, metrics, replica_id())


async def run_poller(settings: PollerSettings, database_url: str, stop: asyncio.Event) -> None:
    """Serve health and metrics and poll until `stop` is set; then shut down in order."""
    ctx = build_context(settings, database_url)
    metrics_server = serve_metrics(ctx.metrics.registry, settings.metrics_port, settings.bind_host)
    health = Health((HEALTH_SERVICE,))
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # a taken port is an error
    health.add_to(server)
    port = server.add_insecure_port(grpc_address(settings.bind_host, settings.health_port))
    await server.start()
    log.info(
        "poller %s: gRPC health on port %d, provider %s", ctx.owner, port, settings.resy_base_url
    )

    async def on_health(ok: bool) -> None:
        await health.set(ok)

    scheduler = Scheduler(ctx, on_health=on_health)
    # Series read from the database: exported even while the provider fails (exported.py).
    exporter = asyncio.create_task(DatabaseSeries(ctx).run(stop))
    try:
        await scheduler.run(stop)
    finally:
        exporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await exporter
        await health.shutdown()
        await server.stop(grace=1)
        await ctx.provider.aclose()
        await ctx.engine.dispose()
        metrics_server.stop()
        log.info("poller stopped")


async def poll_once(
    settings: PollerSettings, database_url: str, bucket_id: str | None
) -> list[PollOutcome]:
    ctx = build_context(settings, database_url)
    try:
        return await Scheduler(ctx).poll_once(bucket_id)
    finally:
        await ctx.provider.aclose()
        await ctx.engine.dispose()
