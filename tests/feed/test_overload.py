"""A feed at its concurrency limit refuses FeedService calls (RESOURCE_EXHAUSTED, counted)
and still answers its health probes and reflection: an overload is not an outage."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.feed.server import SERVICE_NAME, start_feed
from shared.db.urls import libpq_url
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.feed.conftest import feed_settings
from tests.seeding import Seeder
from tests.waiting import wait_until_async

pytestmark = pytest.mark.db

LIMIT = 2


async def _blocked_queries(db_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(libpq_url(db_url), autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dropwatch-feed'"
            " AND wait_event_type = 'Lock'"
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_a_saturated_feed_stays_healthy_and_counts_its_refusals(
    db_url: str, seeder: Seeder
) -> None:
    server = await start_feed(feed_settings(db_url, max_concurrent_rpcs=LIMIT), db_url)
    blocker = await psycopg.AsyncConnection.connect(libpq_url(db_url))
    await blocker.execute("LOCK TABLE open_slots IN ACCESS EXCLUSIVE MODE")
    labels = {"grpc_type": "unary", "grpc_service": SERVICE_NAME, "grpc_method": "StillOpen"}

    def handled(code: str) -> float | None:
        return server.registry.get_sample_value(
            "grpc_server_handled_total", {**labels, "grpc_code": code}
        )

    try:
        assert handled("RESOURCE_EXHAUSTED") == 0  # exists before the first refusal
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            slow = [
                asyncio.ensure_future(stub.StillOpen(feed_pb2.StillOpenRequest(), timeout=30))
                for _ in range(LIMIT)
            ]

            async def saturated() -> bool:
                return await _blocked_queries(db_url) == LIMIT

            await wait_until_async(saturated, f"{LIMIT} calls waiting behind the lock")
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.StillOpen(feed_pb2.StillOpenRequest(), timeout=5)
                assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert handled("RESOURCE_EXHAUSTED") == 3

            # The probes' question and reflection are answered while the limit is taken.
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            async for answer in reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            ):
                names = {s.name for s in answer.list_services_response.service}
                assert SERVICE_NAME in names

            await blocker.rollback()
            for call in slow:
                assert (await call).applied_limit == 1000
            assert handled("OK") == LIMIT
            # With the limit free again, calls are admitted.
            assert (await stub.StillOpen(feed_pb2.StillOpenRequest(), timeout=5)).applied_limit
    finally:
        await blocker.close()
        await server.stop(0)
