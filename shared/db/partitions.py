"""Daily partitions of `drop_events` (range on `bucket_date`).

A partition holds every event of one reservation day, so retention is `DROP TABLE` of whole
days (constant cost, no bloat) instead of a row-by-row DELETE. Partitions are created ahead by
whoever creates buckets (poller start-up and the daily maintenance run).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from sqlalchemy import Connection, text

PARENT = "drop_events"
_NAME = re.compile(r"^drop_events_p(\d{8})$")
# One advisory lock key for partition DDL, so concurrent creators queue instead of failing.
_DDL_LOCK_KEY = 0x64770001


def partition_name(day: dt.date) -> str:
    return f"{PARENT}_p{day:%Y%m%d}"


def is_partition_name(name: str) -> bool:
    return _NAME.match(name) is not None


def ensure_partitions(conn: Connection, days: Iterable[dt.date]) -> list[str]:
    """Create the partitions for `days` that do not exist yet; return the names created."""
    wanted = sorted(set(days))
    if not wanted:
        return []
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK_KEY})
    existing = set(list_partitions(conn))
    created = []
    for day in wanted:
        if day in existing:
            continue
        name = partition_name(day)
        upper = day + dt.timedelta(days=1)
        # Identifiers and literals here come from dates, never from input text.
        conn.execute(
            text(
                f"CREATE TABLE {name} PARTITION OF {PARENT} "
                f"FOR VALUES FROM ('{day.isoformat()}') TO ('{upper.isoformat()}')"
            )
        )
        created.append(name)
    return created


def list_partitions(conn: Connection) -> list[dt.date]:
    """The days that have a partition, oldest first."""
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent "
            "WHERE p.relname = :parent AND p.relnamespace = current_schema()::regnamespace"
        ),
        {"parent": PARENT},
    ).scalars()
    days = []
    for name in rows:
        match = _NAME.match(name)
        if match:
            days.append(dt.datetime.strptime(match.group(1), "%Y%m%d").date())
    return sorted(days)


def drop_partitions_before(conn: Connection, cutoff: dt.date) -> list[dt.date]:
    """Drop every partition for a day before `cutoff`; return the days dropped."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK_KEY})
    dropped = [day for day in list_partitions(conn) if day < cutoff]
    for day in dropped:
        conn.execute(text(f"DROP TABLE {partition_name(day)}"))
    return dropped


def drop_partition(conn: Connection, day: dt.date) -> bool:
    """Drop one day's partition if it exists; True if it did."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK_KEY})
    if day not in list_partitions(conn):
        return False
    conn.execute(text(f"DROP TABLE {partition_name(day)}"))
    return True
