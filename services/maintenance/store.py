"""The maintenance job's database layer: runs the statements of `sql.py`. Never commits.

`run.py` owns the transactions: one per day aggregated or dropped, one per other step.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection

from services.maintenance import sql


def aggregate_day(conn: Connection, day: dt.date, *, market: str, zone: str) -> int:
    """(Re)compute venue and market figures of one past day; return its event count."""
    params = {"day": day, "market": market, "zone": zone}
    for statement in sql.day_aggregates(day):
        conn.execute(statement, params)
    return event_count(conn, day)


def event_count(conn: Connection, day: dt.date) -> int:
    return int(conn.execute(sql.event_count(day)).scalar_one())


def aggregated_count(conn: Connection, day: dt.date) -> int:
    """How many events the stored venue figures of `day` account for."""
    return int(conn.execute(sql.AGGREGATED_COUNT, {"day": day}).scalar_one())


def lock_partition(conn: Connection, day: dt.date) -> None:
    """Block late writers to the day while we verify and drop it (held until commit)."""
    conn.execute(sql.lock_partition(day))


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
