"""`dropwatch windows`: the learned release windows, as a user runs it (real PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import SecretStr
from rich.console import Console
from sqlalchemy import Engine, text

from cli.windows import print_table
from services.maintenance import store
from services.maintenance.settings import MaintenanceSettings
from tests.conftest import free_port
from tests.maintenance.releases import insert_drops, release

REPO = Path(__file__).resolve().parents[2]
ZONE = ZoneInfo("America/New_York")


def _dropwatch(*args: str, db_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    env["DROPWATCH_DATABASE_URL"] = db_url
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "windows", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _history(engine: Engine, venue_name: str) -> None:
    """Venue 1 releases at 09:00 New York time, 7 days ahead, on the last four days (by the
    database clock, which `--refresh` dates itself by)."""
    with engine.begin() as conn:
        now = conn.execute(text("SELECT now()")).scalar_one()
        conn.execute(text("INSERT INTO venues (venue_id, name) VALUES (1, :n)"), {"n": venue_name})
    today = now.astimezone(ZONE).date()
    days = [today - dt.timedelta(days=n) for n in (4, 3, 2, 1)]
    insert_drops(engine, [d for day in days for d in release(1, day, dt.time(9), 7)])


def test_refresh_learns_and_json_shows_them(db_url: str, engine: Engine) -> None:
    _history(engine, "Chez Nous")
    before = _dropwatch("--json", db_url=db_url)
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["windows"] == []
    result = _dropwatch("--refresh", "--json", db_url=db_url)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["market"] == "nyc" and shown["timezone"] == "America/New_York"
    assert shown["refreshed"] == {"windows": 1, "removed": 0}
    (window,) = shown["windows"]
    assert {k: window[k] for k in ("venue_id", "venue", "lead_days", "local_time")} == {
        "venue_id": 1,
        "venue": "Chez Nous",
        "lead_days": 7,
        "local_time": "09:00",
    }
    assert window["days_seen"] == 4 and window["time_slots"] == ["19:00"]
    # The table form: one line per window with what a user needs.
    table = _dropwatch(db_url=db_url)
    assert table.returncode == 0, table.stderr
    line = next(row for row in table.stdout.splitlines() if "Chez Nous" in row)
    assert "09:00" in line and " 7 " in line and " 4 " in line


def test_a_venue_name_is_shown_as_text_not_markup(db_url: str, engine: Engine) -> None:
    _history(engine, "[red]Evil[/red]\x1b[2J")
    settings = MaintenanceSettings(database_url=SecretStr(db_url))
    with engine.begin() as conn:
        today = store.database_now(conn).astimezone(ZONE).date()
        store.learn_release_windows(
            conn,
            market="nyc",
            zone=settings.market_timezone,
            today=today,
            params=settings.window_params,
        )
        rows = store.release_windows(conn, "nyc")
    out = io.StringIO()
    print_table(settings, rows, None, Console(file=out, width=60, color_system=None))
    shown = out.getvalue()
    assert "[red]Evil[/red]" in shown and "\x1b" not in shown


def test_no_windows_yet_says_how_they_are_learned(db_url: str) -> None:
    result = _dropwatch(db_url=db_url)
    assert result.returncode == 0, result.stderr
    assert "no release windows for nyc yet" in result.stdout


def test_database_down_is_one_line() -> None:
    result = _dropwatch(db_url=f"postgresql://u:secretpw@127.0.0.1:{free_port()}/dw")
    assert result.returncode == 2
    assert result.stderr.startswith("dropwatch: error:") and len(result.stderr.splitlines()) == 1
    assert "secretpw" not in result.stderr
