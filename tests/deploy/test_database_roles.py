"""deploy/sql/roles.sql: each service runs its real operations under its own role, and what
the role must not do (DDL, another service's writes, any write from the feed) is refused."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator

import grpc
import psycopg
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, text

from services.feed.server import start_feed
from services.feed.settings import FeedSettings
from services.poller.app import build_context
from services.poller.exported import DatabaseSeries
from services.poller.scheduler import Scheduler
from shared.db.partitions import ensure_partitions
from shared.db.urls import libpq_url
from shared.gen.dropwatch.feed.v1 import feed_pb2, feed_pb2_grpc
from tests.conftest import REPO_ROOT, PgServer
from tests.maintenance.helpers import run_job
from tests.poller.helpers import TODAY, poller_settings
from tools.simulator.server import Simulator

SCRIPT = REPO_ROOT / "deploy" / "sql" / "roles.sql"
NOW = dt.datetime.combine(TODAY, dt.time(12, 0), tzinfo=dt.UTC)
BUCKET = f"{TODAY.isoformat()}_19:00"


@pytest.fixture
def roles(pg_server: PgServer, db_url: str) -> Iterator[dict[str, str]]:
    """The script applied twice (it is idempotent); each service's URL under its role."""
    if os.environ.get("DROPWATCH_DATABASE_URL"):
        pytest.skip("creates cluster-wide roles: only on the embedded test server")
    for _ in range(2):
        with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
            conn.execute(SCRIPT.read_bytes())
    yield {
        name: libpq_url(db_url, username=f"dropwatch_{name}")
        for name in ("poller", "feed", "maintenance")
    }


def _refused(url: str, statement: str) -> str:
    with psycopg.connect(url) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute(statement.encode())
    return type(info.value).__name__


async def test_the_poller_polls_and_can_do_nothing_else(
    roles: dict[str, str], engine: Engine
) -> None:
    url = roles["poller"]
    with engine.begin() as conn:  # today's partition, as maintenance creates it; not tomorrow's
        ensure_partitions(conn, [TODAY])
    sim = Simulator(venues=20, seed=3, clock=lambda: NOW)
    sim.start(host="127.0.0.1", port=0)
    ctx = build_context(poller_settings(url, sim.base_url), url)
    try:
        outcomes = await Scheduler(ctx, clock=lambda: NOW).poll_once(BUCKET)
        series = DatabaseSeries(ctx)
        await series.refresh()  # the alerts' series are readable under the role
        assert series.maintenance.value is not None
    finally:
        await ctx.provider.aclose()
        await ctx.engine.dispose()
        sim.stop()
    assert [o.outcome for o in outcomes] == ["healthy"]
    with engine.connect() as conn:  # tomorrow waits for its partition, nothing failed
        days = conn.execute(text("SELECT DISTINCT bucket_date FROM discovery_buckets")).scalars()
        assert set(days) == {TODAY}
    for statement in (
        "DROP TABLE drop_events",
        "TRUNCATE open_slots",
        "CREATE TABLE evil (x int)",
        "ALTER TABLE venues ADD COLUMN evil int",
        "DELETE FROM day_figures",
        "INSERT INTO maintenance_runs DEFAULT VALUES",
    ):
        assert _refused(url, statement) == "InsufficientPrivilege", statement


async def test_the_feed_serves_and_writes_nothing(roles: dict[str, str]) -> None:
    url = roles["feed"]
    settings = FeedSettings(
        database_url=SecretStr(url),
        feed_port=0,
        metrics_port=0,
        page_token_secret=SecretStr("k" * 32),
    )
    server = await start_feed(settings, url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = await feed_pb2_grpc.FeedServiceStub(channel).StillOpen(
                feed_pb2.StillOpenRequest(min_age_seconds=0)
            )
    finally:
        await server.stop(0)
    assert reply.applied_limit > 0
    assert _refused(url, "INSERT INTO venues (venue_id) VALUES (1)") == "ReadOnlySqlTransaction"
    with psycopg.connect(url) as conn:
        assert conn.execute(b"SHOW default_transaction_read_only").fetchone() == ("on",)
    writes = "SET TRANSACTION READ WRITE; UPDATE discovery_buckets SET lease_owner = 'x'"
    assert _refused(url, writes) == "InsufficientPrivilege"
    assert _refused(url, "SET TRANSACTION READ WRITE; DROP TABLE venues") == "InsufficientPrivilege"


def _runs(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(b"SELECT count(*) FROM maintenance_runs WHERE outcome = 'succeeded'")
        return int(row.fetchone()[0])  # type: ignore[index]


def test_maintenance_runs_under_its_role(roles: dict[str, str]) -> None:
    before = _runs(roles["maintenance"])
    done = run_job(roles["maintenance"], "services.maintenance", "run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _runs(roles["maintenance"]) == before + 1
    # The partitions it created belong to the schema owner, so later migrations can alter them.
    with psycopg.connect(roles["maintenance"]) as conn:
        owners = conn.execute(
            b"SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_inherits i"
            b" JOIN pg_class c ON c.oid = i.inhrelid"
            b" WHERE i.inhparent = 'drop_events'::regclass"
        ).fetchall()
    assert owners and "dropwatch_maintenance" not in {o[0] for o in owners}
    assert _refused(roles["maintenance"], "CREATE ROLE evil") == "InsufficientPrivilege"


async def test_the_poller_claims_the_budget_and_reads_windows_it_cannot_write(
    roles: dict[str, str],
) -> None:
    """Migration 0010's tables under the poller's role (the budget and the release windows)."""
    from services.poller.budget import SharedBudget
    from services.poller.windows import load_release_windows
    from shared.db.engine import make_async_engine
    from shared.settings import Settings

    url = roles["poller"]
    engine = make_async_engine(Settings(database_url=SecretStr(url)), name="role", url=url)
    try:
        budget = SharedBudget(engine, "nyc", 5.0)
        assert await budget.acquire(time.monotonic() + 5)  # the first claim inserts the row
        assert await budget.acquire(time.monotonic() + 5)
        assert budget.counters.failures == 0
        async with engine.connect() as conn:
            assert await load_release_windows(conn, "nyc") == []
    finally:
        await engine.dispose()
    assert _refused(url, "DELETE FROM release_windows") == "InsufficientPrivilege"
    assert _refused(url, "DELETE FROM request_budget") == "InsufficientPrivilege"
