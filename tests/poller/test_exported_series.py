"""A poller that cannot reach the provider still exports, from the database, one
last-healthy-poll series per live bucket (its creation time when it never had a healthy poll)
and the last recorded maintenance success: the stale-bucket and maintenance alerts fire after
a restart during an outage instead of going silent."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from services.poller.app import run_poller
from services.poller.exported import MAINTENANCE_SUCCESS
from tests.conftest import free_port
from tests.poller.helpers import poller_settings
from tests.waiting import wait_until_async

pytestmark = pytest.mark.db

LAST_HEALTHY = "dropwatch_poller_bucket_last_healthy_poll_timestamp_seconds"


def _series(body: str, name: str) -> dict[str, float]:
    return {
        sample.labels.get("bucket_id", ""): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name
    }


def _failures(body: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "dropwatch_poller_fetch_outcomes_total"
        and sample.labels["reason"] != "healthy"
    )


async def test_a_poller_that_cannot_reach_the_provider_exports_every_live_bucket(
    db_url: str, engine: Engine
) -> None:
    metrics_port = free_port()
    settings = poller_settings(
        db_url,
        "http://127.0.0.1:9",  # nothing listens: every fetch fails
        metrics_port=metrics_port,
        health_port=free_port(),
        tick_seconds=0.2,
        max_attempts=1,
    )
    live = 2 * len(settings.anchors)  # window_days=2
    stop = asyncio.Event()
    poller = asyncio.create_task(run_poller(settings, db_url, stop))
    try:
        async with httpx.AsyncClient() as client:

            async def scraped_after_a_failed_fetch() -> str | None:
                if poller.done():
                    poller.result()  # raises what stopped it
                with contextlib.suppress(httpx.TransportError):
                    body = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                    if _failures(body) >= 1 and len(_series(body, LAST_HEALTHY)) == live:
                        return body
                return None

            body = await wait_until_async(scraped_after_a_failed_fetch, "a failed fetch")
    finally:
        stop.set()
        await asyncio.wait_for(poller, 30)

    with engine.connect() as conn:
        created = {
            row.bucket_id: row.created_at.timestamp()
            for row in conn.execute(text("SELECT bucket_id, created_at FROM discovery_buckets"))
        }
        began = conn.execute(
            text("SELECT started_at FROM maintenance_runs WHERE outcome = 'installed'")
        ).scalar_one()
        healthy = conn.execute(
            text("SELECT count(*) FROM discovery_buckets WHERE last_healthy_poll_at IS NOT NULL")
        ).scalar_one()
    assert healthy == 0
    assert len(created) == live
    assert _series(body, LAST_HEALTHY) == pytest.approx(created)
    assert _series(body, MAINTENANCE_SUCCESS) == {"": pytest.approx(began.timestamp())}
