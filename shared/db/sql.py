"""The SQL that `shared/db` sends: advisory locks, partition DDL, the live buckets.

Every statement of a service lives in that service's `sql.py`; these are the ones every
service needs. The functions that run them (`locks.py`, `partitions.py`, `buckets.py`) never
commit, except the session locks, which must be visible outside the caller's transaction.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import TextClause, text

LOCK = text("SELECT pg_advisory_lock(:k)")
TRY_LOCK = text("SELECT pg_try_advisory_lock(:k)")
UNLOCK = text("SELECT pg_advisory_unlock(:k)")
XACT_LOCK = text("SELECT pg_advisory_xact_lock(:k)")

PARTITION_NAMES = text(
    "SELECT c.relname FROM pg_inherits i "
    "JOIN pg_class c ON c.oid = i.inhrelid "
    "JOIN pg_class p ON p.oid = i.inhparent "
    "WHERE p.relname = :parent AND p.relnamespace = current_schema()::regnamespace"
)


# Days whose figures are final: their partition was dropped and is never created again.
FINAL_DAYS = text(
    "SELECT window_date FROM day_figures"
    " WHERE final_at IS NOT NULL AND window_date = ANY(CAST(:days AS date[]))"
)


def create_partition(parent: str, name: str, day: dt.date) -> TextClause:
    """The partition of `parent` for one day (identifiers and bounds come from dates only)."""
    upper = day + dt.timedelta(days=1)
    return text(
        f"CREATE TABLE {name} PARTITION OF {parent} "
        f"FOR VALUES FROM ('{day.isoformat()}') TO ('{upper.isoformat()}')"
    )


def give_to_parent_owner(parent: str, name: str) -> TextClause:
    """A partition belongs to its creator; a role that creates one on the owner's behalf (the
    maintenance role, deploy/sql/roles.sql) hands it to the parent's owner, so later
    migrations, which recurse into every partition as the owner, can still alter it."""
    return text(
        "DO $$ BEGIN EXECUTE format('ALTER TABLE %I OWNER TO %I', "
        f"'{name}', (SELECT pg_get_userbyid(relowner) FROM pg_class "
        f"WHERE oid = '{parent}'::regclass)); END $$"
    )


def drop_table(name: str) -> TextClause:
    return text(f"DROP TABLE {name}")


ENSURE_BUCKETS = text(
    """
    INSERT INTO discovery_buckets (bucket_id, market, date_str, bucket_date, time_slot)
    SELECT b.id, :market, to_char(b.day, 'YYYY-MM-DD'), b.day, b.anchor
    FROM unnest(CAST(:ids AS text[]), CAST(:dates AS date[]), CAST(:slots AS text[]))
         AS b(id, day, anchor)
    WHERE NOT EXISTS (
        SELECT 1 FROM day_figures f WHERE f.window_date = b.day AND f.final_at IS NOT NULL
    )
    ON CONFLICT (bucket_id) DO NOTHING
    """
)
