"""Daily partitions of `drop_events` (range on `bucket_date`).

A partition holds every event of one reservation day, so retention is `DROP TABLE` of whole
days (constant cost, no bloat) instead of a row-by-row DELETE. Partitions are created ahead by
whoever creates buckets (poller start-up and the daily maintenance run). All partition DDL
takes one advisory lock (`contracts.PARTITION_DDL_LOCK`), so concurrent creators queue
instead of failing. A day whose figures are final (`day_figures.final_at`, set by the
maintenance run in the transaction that drops the partition) never gets a partition again,
whatever clock the creator has: its events are gone and new ones would only be lost.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from sqlalchemy import Connection

from shared.db import sql
from shared.db.contracts import PARTITION_DDL_LOCK
from shared.db.locks import transaction_lock

PARENT = "drop_events"
_NAME = re.compile(r"^drop_events_p(\d{8})$")


def partition_name(day: dt.date) -> str:
    return f"{PARENT}_p{day:%Y%m%d}"


def is_partition_name(name: str) -> bool:
    return _NAME.match(name) is not None


def ensure_partitions(conn: Connection, days: Iterable[dt.date]) -> list[str]:
    """Create the partitions for `days` that do not exist yet and are not final; return the
    names created."""
    wanted = sorted(set(days))
    if not wanted:
        return []
    transaction_lock(conn, PARTITION_DDL_LOCK)
    existing = set(list_partitions(conn)) | final_days(conn, wanted)
    created = []
    for day in wanted:
        if day in existing:
            continue
        name = partition_name(day)
        conn.execute(sql.create_partition(PARENT, name, day))
        conn.execute(sql.give_to_parent_owner(PARENT, name))
        created.append(name)
    return created


def final_days(conn: Connection, days: Iterable[dt.date]) -> set[dt.date]:
    """Those of `days` whose figures are final (their partition dropped for good)."""
    return set(conn.execute(sql.FINAL_DAYS, {"days": list(days)}).scalars())


def list_partitions(conn: Connection) -> list[dt.date]:
    """The days that have a partition, oldest first."""
    rows = conn.execute(sql.PARTITION_NAMES, {"parent": PARENT}).scalars()
    days = []
    for name in rows:
        match = _NAME.match(name)
        if match:
            days.append(dt.datetime.strptime(match.group(1), "%Y%m%d").date())
    return sorted(days)


def drop_partitions_before(conn: Connection, cutoff: dt.date) -> list[dt.date]:
    """Drop every partition for a day before `cutoff`; return the days dropped."""
    transaction_lock(conn, PARTITION_DDL_LOCK)
    dropped = [day for day in list_partitions(conn) if day < cutoff]
    for day in dropped:
        conn.execute(sql.drop_table(partition_name(day)))
    return dropped


def drop_partition(conn: Connection, day: dt.date) -> bool:
    """Drop one day's partition if it exists; True if it did."""
    transaction_lock(conn, PARTITION_DDL_LOCK)
    if day not in list_partitions(conn):
        return False
    conn.execute(sql.drop_table(partition_name(day)))
    return True
