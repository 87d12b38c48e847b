"""Build event histories and compute the expected metrics in plain Python."""

from __future__ import annotations

import datetime as dt
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, text

from services.maintenance.run import RunSummary, run
from services.maintenance.settings import MaintenanceSettings
from shared.db.partitions import ensure_partitions
from tests.conftest import REPO_ROOT

ZONE = ZoneInfo("America/New_York")


@dataclass(frozen=True)
class Ev:
    venue_id: int
    day: dt.date
    event_type: str  # NEW_DROP | CLOSED
    opened_at: dt.datetime
    duration: float | None = None
    prime: bool = False


def job_env(db_url: str, **extra: str) -> dict[str, str]:
    """The environment of a maintenance process: no DROPWATCH_* of ours, then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    env.update(DROPWATCH_DATABASE_URL=db_url, **extra)
    return env


def run_job(db_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` (a maintenance entry point) to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        env=job_env(db_url, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_at(
    settings: MaintenanceSettings, engine: Engine, now: dt.datetime, **kw: Any
) -> RunSummary:
    """A run whose database clock reads `now` (a day simulated at any date)."""
    return run(settings, engine, now, clock=lambda: now, **kw)


def insert_events(engine: Engine, events: list[Ev]) -> None:
    with engine.begin() as conn:
        ensure_partitions(conn, {e.day for e in events})
        for i, e in enumerate(events):
            write_event(conn, e, f"k{i}")


def write_event(conn: Connection, e: Ev, key: str) -> None:
    """One event as the poller writes it (`key` makes it unique)."""
    anchor = "19:00" if e.prime else "15:00"
    closed = e.opened_at + dt.timedelta(seconds=e.duration) if e.duration is not None else None
    conn.execute(
        text(
            """
            INSERT INTO drop_events (bucket_date, bucket_id, market, provider, slot_id,
                venue_id, event_type, opened_at, closed_at, drop_duration_seconds, slot_date,
                slot_time, seating_type, party_sizes, time_slot, time_bucket, dedupe_key)
            VALUES (:d, :b, 'nyc', 'resy', :slot, :v, :t, :o, :c, :dur, :d, :st,
                'Dining Room', '{2}', :a, :tb, :k)
            """
        ),
        {
            "d": e.day,
            "b": f"{e.day.isoformat()}_{anchor}",
            "slot": f"s{key}",
            "v": e.venue_id,
            "t": e.event_type,
            "o": e.opened_at,
            "c": closed,
            "dur": e.duration,
            "st": dt.time(19, 0) if e.prime else dt.time(15, 0),
            "a": anchor,
            "tb": "prime" if e.prime else "off_peak",
            "k": key,
        },
    )


def expected_venue_metrics(
    events: list[Ev], days: set[dt.date]
) -> dict[tuple[int, dt.date], tuple[Any, ...]]:
    groups: dict[tuple[int, dt.date], list[Ev]] = defaultdict(list)
    for e in events:
        if e.day in days:
            groups[(e.venue_id, e.day)].append(e)
    out = {}
    for key, evs in groups.items():
        drops = [e for e in evs if e.event_type == "NEW_DROP"]
        durations = [e.duration for e in evs if e.event_type == "CLOSED" and e.duration is not None]
        out[key] = (
            len(drops),
            len(evs) - len(drops),
            sum(1 for e in drops if e.prime),
            sum(1 for e in drops if not e.prime),
            round(statistics.fmean(durations), 6) if durations else None,
            round(statistics.median(durations), 6) if durations else None,
            round(1.0 / (1 + len(drops)), 6),
        )
    return out


def actual_venue_metrics(engine: Engine) -> dict[tuple[int, dt.date], tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT venue_id, window_date, new_drop_count, closed_count, prime_drop_count,"
                " off_peak_drop_count, avg_drop_duration_seconds,"
                " median_drop_duration_seconds, scarcity_score FROM venue_metrics"
            )
        ).all()
    return {
        (r[0], r[1]): (
            r[2],
            r[3],
            r[4],
            r[5],
            None if r[6] is None else round(r[6], 6),
            None if r[7] is None else round(r[7], 6),
            round(r[8], 6),
        )
        for r in rows
    }


def expected_market_metrics(events: list[Ev], days: set[dt.date]) -> dict[dt.date, tuple[Any, ...]]:
    out = {}
    for day in days:
        evs = [e for e in events if e.day == day]
        drops = [e for e in evs if e.event_type == "NEW_DROP"]
        durations = [e.duration for e in evs if e.event_type == "CLOSED" and e.duration is not None]
        hours: dict[str, int] = defaultdict(int)
        for e in drops:
            hours[str(e.opened_at.astimezone(ZONE).hour)] += 1
        out[day] = (
            len(drops),
            len(evs) - len(drops),
            len({e.venue_id for e in drops}),
            round(statistics.fmean(durations), 6) if durations else None,
            round(statistics.median(durations), 6) if durations else None,
            day.isoweekday(),
            dict(hours),
        )
    return out


def actual_market_metrics(engine: Engine) -> dict[dt.date, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT window_date, total_drops, total_closes, venues_with_drops,"
                " avg_drop_duration_seconds, median_drop_duration_seconds, weekday,"
                " drops_by_hour FROM market_metrics"
            )
        ).all()
    return {
        r[0]: (
            r[1],
            r[2],
            r[3],
            None if r[4] is None else round(r[4], 6),
            None if r[5] is None else round(r[5], 6),
            r[6],
            r[7],
        )
        for r in rows
    }


def table(engine: Engine, name: str) -> list[tuple[Any, ...]]:
    """A metrics table's rows without `updated_at`, sorted, for exact comparisons."""
    with engine.connect() as conn:
        cols = [
            c
            for c in conn.execute(
                text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = :t AND column_name <> 'updated_at'"
                    " ORDER BY ordinal_position"
                ),
                {"t": name},
            ).scalars()
        ]
        rows = conn.execute(text(f"SELECT {', '.join(cols)} FROM {name}")).all()
    return sorted((tuple(r) for r in rows), key=repr)
