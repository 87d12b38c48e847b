"""The feed under operational conditions: deadlines, overload, database down, roles, probes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.feed.server import start_feed
from shared.db.urls import libpq_url, to_sqlalchemy_url
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.conftest import REPO_ROOT, free_port
from tests.feed.conftest import NOW, feed_settings
from tests.seeding import Seeder, SeedSlot
from tests.waiting import wait_until, wait_until_async

Stub = feed_pb2_grpc.FeedServiceStub


async def _locked(db_url: str) -> psycopg.AsyncConnection:
    """A connection holding an exclusive lock on open_slots: feed queries block behind it."""
    conn = await psycopg.AsyncConnection.connect(libpq_url(db_url))
    await conn.execute("LOCK TABLE open_slots IN ACCESS EXCLUSIVE MODE")
    return conn


async def _feed_queries_running(db_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(libpq_url(db_url), autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dropwatch-feed'"
            " AND state = 'active'"
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


def _serving(channel: grpc.Channel) -> bool:
    """Whether the feed still takes new calls (after SIGTERM: NOT_SERVING, then refused)."""
    health = health_pb2_grpc.HealthStub(channel)
    try:
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def test_client_deadline_cancels_the_database_query(db_url: str, stub: Stub) -> None:
    blocker = await _locked(db_url)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.StillOpen(feed_pb2.StillOpenRequest(), timeout=0.5)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2

        async def query_cancelled() -> bool:
            return await _feed_queries_running(db_url) == 0

        # The server-side statement timeout follows the deadline: the query ends well before
        # the feed's own 5 s statement timeout would end it.
        await wait_until_async(query_cancelled, "the feed's query to be cancelled", timeout=3)
    finally:
        await blocker.rollback()
        await blocker.close()


async def test_overload_is_resource_exhausted_not_a_queue(db_url: str, seeder: Seeder) -> None:
    server = await start_feed(feed_settings(db_url, max_concurrent_rpcs=1), db_url)
    blocker = await _locked(db_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            slow = asyncio.ensure_future(stub.StillOpen(feed_pb2.StillOpenRequest(), timeout=5))
            await wait_until_async(
                lambda: _feed_queries_running(db_url), "the first call's query behind the lock"
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.StillOpen(feed_pb2.StillOpenRequest(), timeout=5)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            await blocker.rollback()
            assert (await slow).applied_limit == 1000
    finally:
        await blocker.close()
        await server.stop(0)


@pytest.mark.slow
async def test_database_down_is_unavailable_quickly() -> None:
    url = "postgresql://feed:pw-not-logged@127.0.0.1:1/nowhere"
    server = await start_feed(feed_settings(url), url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.JustOpened(feed_pb2.JustOpenedRequest(), timeout=10)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 3
            assert "pw-not-logged" not in (info.value.details() or "")
    finally:
        await server.stop(0)


async def test_recovers_when_its_connections_are_killed(db_url: str, stub: Stub) -> None:
    await stub.StillOpen(feed_pb2.StillOpenRequest())
    async with await psycopg.AsyncConnection.connect(libpq_url(db_url), autocommit=True) as conn:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'dropwatch-feed'"
        )
    reply = await stub.StillOpen(feed_pb2.StillOpenRequest())
    assert reply.applied_limit == 1000


async def test_runs_with_a_read_only_role(db_url: str, seeder: Seeder) -> None:
    role = f"dw_feed_ro_{uuid.uuid4().hex[:8]}"
    database = to_sqlalchemy_url(db_url).database
    async with await psycopg.AsyncConnection.connect(libpq_url(db_url), autocommit=True) as conn:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {role}')
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    await seeder.open([SeedSlot(4, NOW.date(), "19:00")], at=NOW)
    ro_url = libpq_url(db_url, username=role)
    server = await start_feed(feed_settings(ro_url), ro_url)
    server.servicer.clock = lambda: NOW
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = await feed_pb2_grpc.FeedServiceStub(channel).JustOpened(
                feed_pb2.JustOpenedRequest()
            )
            assert [i.venue.id for i in reply.items] == [4]
        async with await psycopg.AsyncConnection.connect(libpq_url(ro_url)) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute("DELETE FROM open_slots")
    finally:
        await server.stop(0)
        async with await psycopg.AsyncConnection.connect(libpq_url(db_url), autocommit=True) as c:
            await c.execute(f"DROP OWNED BY {role}")
            await c.execute(f"DROP ROLE {role}")


async def test_health_and_reflection(feed: object, stub: Stub) -> None:
    from services.feed.server import FeedServer

    assert isinstance(feed, FeedServer)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{feed.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "dropwatch.feed.v1.FeedService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in reflect.ServerReflectionInfo(iter([request])):
            names = {s.name for s in answer.list_services_response.service}
            assert "dropwatch.feed.v1.FeedService" in names
            assert "grpc.health.v1.Health" in names


@pytest.mark.slow
def test_sigterm_drains_in_flight_calls_and_exits_zero(db_url: str, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    env.update(DROPWATCH_DATABASE_URL=db_url, DROPWATCH_SHUTDOWN_GRACE_SECONDS="5")
    log = (tmp_path / "feed.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.feed",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            blocker = psycopg.connect(libpq_url(db_url))
            blocker.execute("LOCK TABLE open_slots IN ACCESS EXCLUSIVE MODE")
            future = stub.StillOpen.future(feed_pb2.StillOpenRequest(), timeout=10)
            wait_until(
                lambda: asyncio.run(_feed_queries_running(db_url)),
                "the call's query behind the lock",
            )
            proc.send_signal(signal.SIGTERM)
            wait_until(lambda: not _serving(channel), "the feed to stop serving new calls")
            blocker.rollback()  # the in-flight call can now finish inside the grace period
            blocker.close()
            assert future.result().applied_limit == 1000
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


async def test_an_unexpected_database_error_is_internal_without_details(
    db_url: str, stub: Stub
) -> None:
    async with await psycopg.AsyncConnection.connect(libpq_url(db_url), autocommit=True) as conn:
        await conn.execute("ALTER TABLE venues RENAME COLUMN name TO venue_name_gone")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.StillOpen(feed_pb2.StillOpenRequest())
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error"
