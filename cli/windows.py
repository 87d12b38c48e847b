"""`dropwatch windows`: the release windows learned from the events (when to look).

Reads what the daily maintenance run stored; `--refresh` learns them again first, as the run
does, dated by the database clock. Times are market-local (DROPWATCH_MARKET_TIMEZONE).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from cli.feed import plain
from services.maintenance import store
from services.maintenance.settings import MaintenanceSettings
from shared.db.buckets import market_today
from shared.db.engine import unavailable_as_error
from shared.startup import started


def add_arguments(sub: Any) -> None:
    """Register the subcommand on the `dropwatch` parser's subparsers."""
    p = sub.add_parser("windows", help="release windows: when each venue releases tables")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--refresh", action="store_true", help="learn them from the events now")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with started(MaintenanceSettings, "windows") as up, unavailable_as_error():
        settings = up.settings
        learned: store.WindowsLearned | None = None
        if args.refresh:
            with up.engine.begin() as conn:
                today = market_today(settings.zone, store.database_now(conn))
                learned = store.learn_release_windows(
                    conn,
                    market=settings.market,
                    zone=settings.market_timezone,
                    today=today,
                    params=settings.window_params,
                )
        with up.engine.connect() as conn:
            rows = store.release_windows(conn, settings.market)
    if args.json:
        print(json.dumps(as_json(settings, rows, learned), indent=2))
    else:
        print_table(settings, rows, learned)
    return 0


def local_time(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _venue(row: dict[str, Any]) -> str:
    return f"{row['venue'] or '?'} ({row['venue_id']})"


def as_json(
    settings: MaintenanceSettings,
    rows: list[dict[str, Any]],
    learned: store.WindowsLearned | None,
) -> dict[str, Any]:
    def day(value: dt.date | dt.datetime) -> str:
        return value.isoformat()

    return {
        "market": settings.market,
        "timezone": settings.market_timezone,
        "refreshed": None if learned is None else vars(learned),
        "windows": [
            {
                "venue_id": r["venue_id"],
                "venue": r["venue"],
                "lead_days": r["lead_days"],
                "local_time": local_time(r["release_minute"]),
                "time_slots": list(r["time_slots"]),
                "days_seen": r["days_seen"],
                "first_seen": day(r["first_seen"]),
                "last_seen": day(r["last_seen"]),
                "slots_per_release": r["slots_per_release"],
                "refreshed_at": day(r["refreshed_at"]),
            }
            for r in rows
        ],
    }


def print_table(
    settings: MaintenanceSettings,
    rows: list[dict[str, Any]],
    learned: store.WindowsLearned | None,
    console: Console | None = None,
) -> None:
    out = console or Console()
    if learned is not None:
        out.print(f"learned now: {learned.windows} windows, {learned.removed} no longer seen")
    if not rows:
        out.print(
            f"no release windows for {settings.market} yet: they are learned from NEW_DROP "
            "bursts seen on several days (`dropwatch windows --refresh`, or the daily run)"
        )
        return
    table = Table(
        title=f"release windows of {settings.market}: {len(rows)}; local time in "
        f"{settings.market_timezone}"
    )
    for column in ("local time", "venue", "lead days", "days seen", "last seen", "buckets"):
        table.add_column(column, no_wrap=True)
    for r in rows:
        table.add_row(
            local_time(r["release_minute"]),
            plain(_venue(r)),
            str(r["lead_days"]),
            str(r["days_seen"]),
            r["last_seen"].isoformat(),
            ", ".join(r["time_slots"]),
        )
    out.print(table)
