"""The maintenance job's database layer: runs the statements of `sql.py`. Never commits.

`run.py` owns the transactions (one per day aggregated or dropped, one per other step) and
decides what to do with each day; these functions only read and write.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection

from services.maintenance import sql
from shared.db.partitions import drop_partition
from shared.errors import DropwatchError


class FiguresGuardError(DropwatchError):
    """A write would have replaced final figures, or figures from more events."""


@dataclass(frozen=True)
class DayState:
    """One day with a partition, as seen under its SHARE lock."""

    day: dt.date
    events: int  # in the partition now
    counted: int | None  # events the stored figures count (None: no figures yet)
    final_at: dt.datetime | None  # the figures are final (the partition was dropped)


def database_now(conn: Connection) -> dt.datetime:
    moment = conn.execute(sql.DATABASE_NOW).scalar_one()
    assert isinstance(moment, dt.datetime)
    return moment


def day_state(conn: Connection, day: dt.date) -> DayState:
    """Lock the day's partition against late writers (until commit) and read where it stands."""
    conn.execute(sql.lock_partition(day))
    events = event_count(conn, day)
    row = conn.execute(sql.DAY_FIGURES, {"day": day}).one_or_none()
    if row is None:
        return DayState(day, events, None, None)
    return DayState(day, events, int(row.event_count), row.final_at)


def aggregate_day(conn: Connection, day: dt.date, *, market: str, zone: str) -> int:
    """(Re)compute venue and market figures of one past day and record how many events they
    count; return that count. Under the partition's SHARE lock, so figures and count agree.

    The record refuses to replace final figures or figures of more events; the caller's
    transaction then rolls back with the figures it wrote (`FiguresGuardError`).
    """
    conn.execute(sql.lock_partition(day))
    params = {"day": day, "market": market, "zone": zone}
    for statement in sql.day_aggregates(day):
        conn.execute(statement, params)
    events = event_count(conn, day)
    if conn.execute(sql.RECORD_DAY, {"day": day, "events": events}).rowcount != 1:
        raise FiguresGuardError(f"{day}: stored figures are final or count more than {events}")
    return events


def finalize_day(conn: Connection, day: dt.date, events: int) -> None:
    """Drop the day's partition and mark its figures final, in the caller's transaction."""
    if conn.execute(sql.FINALIZE_DAY, {"day": day, "events": events}).rowcount != 1:
        raise FiguresGuardError(f"{day}: figures do not count its {events} events")
    record_change_floor(conn, day)
    drop_partition(conn, day)


def record_change_floor(conn: Connection, day: dt.date) -> None:
    """Before the day's partition is dropped: change cursors up to its events expire (#15)."""
    conn.execute(sql.record_change_floor(day), {"day": day})


def event_count(conn: Connection, day: dt.date) -> int:
    return int(conn.execute(sql.event_count(day)).scalar_one())


def rolling_metrics(conn: Connection, as_of: dt.date, days: int) -> int:
    """Per venue, the `days` window dates before `as_of`; replaces that as-of date's rows."""
    conn.execute(sql.DELETE_ROLLING, {"d": as_of})
    result = conn.execute(sql.ROLLING_METRICS, {"as_of": as_of, "days": days})
    return int(result.rowcount)


def prune_buckets(conn: Connection, cutoff_bucket_id: str) -> int:
    """Delete buckets before the cutoff; their open and baseline slots go with them."""
    return int(conn.execute(sql.PRUNE_BUCKETS, {"cutoff": cutoff_bucket_id}).rowcount)


def buckets_awaiting_baseline(conn: Connection, first_day: dt.date) -> int:
    return int(conn.execute(sql.AWAITING_BASELINE, {"d": first_day}).scalar_one())


def live_bucket_count(conn: Connection, first_day: dt.date) -> int:
    return int(conn.execute(sql.LIVE_BUCKETS, {"d": first_day}).scalar_one())


RUNS_KEPT_DAYS = 90


def record_run(
    conn: Connection, started_at: dt.datetime, outcome: str, summary: dict[str, Any]
) -> None:
    """Record one run (`succeeded`, `skipped` or `failed`) with its JSON summary."""
    conn.execute(sql.PRUNE_RUNS, {"days": RUNS_KEPT_DAYS})
    conn.execute(
        sql.RECORD_RUN,
        {"started_at": started_at, "outcome": outcome, "summary": json.dumps(summary)},
    )


@dataclass(frozen=True)
class WindowParams:
    """What counts as a release window (the DROPWATCH_WINDOW_* settings)."""

    min_burst: int = 3  # NEW_DROPs of one venue and lead that make a release on a day
    burst_minutes: int = 5  # the most between two drops of one release
    min_days: int = 3  # days a release moment must recur on
    drift_minutes: int = 10  # release minutes this close on other days are the same moment
    history_days: int = 28  # local days of opened_at looked at, up to today


@dataclass(frozen=True)
class WindowsLearned:
    windows: int  # the market's windows now
    removed: int  # windows no longer seen, deleted


def learn_release_windows(
    conn: Connection, *, market: str, zone: str, today: dt.date, params: WindowParams
) -> WindowsLearned:
    """Replace the market's release windows with what the retained events show up to `today`
    (market-local), in the caller's transaction."""
    row = conn.execute(
        sql.LEARN_RELEASE_WINDOWS,
        {"market": market, "zone": zone, "today": today, **asdict(params)},
    ).one()
    return WindowsLearned(int(row.windows), int(row.removed))


def release_windows(conn: Connection, market: str) -> list[dict[str, Any]]:
    """The market's learned windows with venue names, by local time (for display)."""
    rows = conn.execute(sql.SHOW_RELEASE_WINDOWS, {"market": market})
    return [dict(row._mapping) for row in rows]
