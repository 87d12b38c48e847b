"""A killed maintenance process, and databases migrated with figures already in them."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

from sqlalchemy import Engine, text

from services.maintenance.run import run
from shared.db import migrate
from shared.db.buckets import market_today
from shared.db.partitions import list_partitions, partition_name
from tests.conftest import REPO_ROOT
from tests.maintenance.helpers import (
    ZONE,
    Ev,
    actual_market_metrics,
    actual_venue_metrics,
    expected_market_metrics,
    expected_venue_metrics,
    insert_events,
    job_env,
)
from tests.maintenance.test_run import msettings
from tests.waiting import wait_until

_BLOCKED = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name LIKE 'dropwatch-maintenance%' AND wait_event_type = 'Lock'"
)
_ALIVE = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name LIKE 'dropwatch-maintenance%'"
)


def _count(engine: Engine, query: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())  # type: ignore[call-overload]


def test_a_killed_run_then_a_rerun_gives_the_clean_figures(db_url: str, engine: Engine) -> None:
    with engine.connect() as conn:
        real = conn.execute(text("SELECT now()")).scalar_one()
    today = market_today(ZONE, real)
    days = [today - dt.timedelta(days=n) for n in (2, 1)]
    events = [
        Ev(v, day, kind, real - dt.timedelta(days=3), 30.0 * v if kind == "CLOSED" else None)
        for day in days
        for v in (1, 2)
        for kind in ("NEW_DROP", "CLOSED")
    ]
    insert_events(engine, events)
    with engine.connect() as holder:  # the second day's aggregation waits behind this lock
        holder.execute(text(f"LOCK TABLE {partition_name(days[1])} IN ACCESS EXCLUSIVE MODE"))
        job = subprocess.Popen(
            [sys.executable, "-m", "services.maintenance", "run"],
            cwd=REPO_ROOT,
            env=job_env(db_url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: _count(engine, _BLOCKED), "the run to wait on the lock", 60)
        finally:
            job.kill()
            job.wait(timeout=60)
        holder.rollback()
    wait_until(lambda: _count(engine, _ALIVE) == 0, "the killed run's sessions to end", 60)
    with engine.connect() as conn:
        assert days[1] in list_partitions(conn)  # killed before it could drop anything
    summary = run(msettings(db_url), engine)
    assert summary.ran and not summary.skipped
    assert actual_venue_metrics(engine) == expected_venue_metrics(events, set(days))
    assert actual_market_metrics(engine) == expected_market_metrics(events, set(days))
    with engine.connect() as conn:
        assert not set(days) & set(list_partitions(conn))


def test_migration_records_existing_figures_and_finals_dropped_days(
    db_url: str, engine: Engine
) -> None:
    kept, dropped = dt.date(2026, 11, 2), dt.date(2026, 11, 1)
    insert_events(engine, [Ev(5, kept, "NEW_DROP", dt.datetime(2026, 11, 2, 20, tzinfo=dt.UTC))])
    migrate.downgrade(engine, "0004")
    with engine.begin() as conn:
        for day, drops in ((kept, 1), (dropped, 4)):
            conn.execute(
                text(
                    "INSERT INTO venue_metrics VALUES (5, :d, :n, 1, 0, :n, NULL, NULL, 0.5, now())"
                ),
                {"d": day, "n": drops},
            )
    migrate.upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT window_date, event_count, final_at IS NOT NULL FROM day_figures")
        ).all()
    assert sorted(rows) == [(dropped, 5, True), (kept, 2, False)]
