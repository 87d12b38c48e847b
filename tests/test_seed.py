"""`dropwatch seed`: realistic history in exactly the shapes the poller writes."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, text

from services.maintenance.run import run as maintenance_run
from services.maintenance.settings import MaintenanceSettings
from services.seed import seed
from shared.errors import DropwatchError
from shared.settings import Settings
from tests.conftest import REPO_ROOT

NOW = dt.datetime(2026, 12, 10, 17, 0, tzinfo=dt.UTC)


def test_seeded_history_is_consistent(engine: Engine, db_url: str) -> None:
    settings = Settings(database_url=SecretStr(db_url))
    result = seed(engine, settings, events=28_000, past_days=14, venues=300, now=NOW)
    assert result.days == 28 and 0.85 * 28_000 <= result.events <= 28_000  # open pairs: no CLOSED
    with engine.connect() as conn:
        q = lambda sql: conn.execute(text(sql)).scalar_one()  # noqa: E731
        assert q("SELECT count(*) FROM drop_events") == result.events
        # Every CLOSED closes an existing NEW_DROP of the same slot, with its duration.
        assert (
            q(
                "SELECT count(*) FROM drop_events c LEFT JOIN drop_events d"
                " ON d.id = c.drop_event_id AND d.event_type = 'NEW_DROP' AND d.slot_id = c.slot_id"
                " WHERE c.event_type = 'CLOSED' AND (d.id IS NULL"
                " OR c.closed_at - c.opened_at <> c.drop_duration_seconds * interval '1 second'"
                " OR c.opened_at <> d.opened_at)"
            )
            == 0
        )
        assert (
            q(
                "SELECT count(*) FROM drop_events WHERE opened_at > :now".replace(
                    ":now", f"'{NOW.isoformat()}'"
                )
            )
            == 0
        )
        # Open drops are exactly the live NEW_DROPs without a CLOSED.
        assert (
            q(
                "SELECT count(*) FROM open_slots o JOIN drop_events d ON d.id = o.drop_event_id"
                " WHERE NOT EXISTS (SELECT 1 FROM drop_events c WHERE c.drop_event_id = d.id)"
            )
            == result.open_slots
            > 0
        )
        assert q("SELECT count(*) FROM discovery_buckets WHERE bucket_date >= '2026-12-10'") == 28
        assert q("SELECT count(DISTINCT venue_id) FROM drop_events") > 250
        recent = q(
            "SELECT count(*) FROM open_slots WHERE opened_at > "
            f"'{(NOW - dt.timedelta(minutes=5)).isoformat()}'"
        )
        assert recent > 0  # something for JustOpened
    with pytest.raises(DropwatchError, match="already has events"):
        seed(engine, settings, events=1000, now=NOW)


def test_maintenance_runs_on_seeded_history(engine: Engine, db_url: str) -> None:
    settings = Settings(database_url=SecretStr(db_url))
    result = seed(engine, settings, events=10_000, past_days=3, venues=100, now=NOW)
    summary = maintenance_run(MaintenanceSettings(database_url=SecretStr(db_url)), engine, NOW)
    assert summary.steps["prune_events"].detail["partitions"] == 3
    with engine.connect() as conn:
        aggregated = conn.execute(
            text("SELECT sum(new_drop_count + closed_count) FROM venue_metrics")
        ).scalar_one()
    assert aggregated == summary.steps["prune_events"].rows < result.events


def test_seed_cli(db_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    env["DROPWATCH_DATABASE_URL"] = db_url
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "seed",
            "--events",
            "5000",
            "--days",
            "2",
            "--venues",
            "50",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "seeded" in result.stdout and "events/s" in result.stdout
    again = subprocess.run(
        [sys.executable, "-m", "services.cli", "seed", "--events", "5000"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "already has events" in again.stderr
    assert "Traceback" not in again.stderr
