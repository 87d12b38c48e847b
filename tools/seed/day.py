"""One reservation day of a plan, written set-based (the SQL is in sql.py).

`create` builds the day as a new table (the seed's way); `insert` writes the same rows into
the partitioned table, with every index maintained row by row (the naive way the seed
benchmark compares against). Either way the day's open drops and baseline slots follow, into
`open_table`.

(CREATE TABLE AS would write the events about 15% faster, through PostgreSQL's bulk-insert
path, but ATTACH needs the parent's CHECK constraints on the day table exactly as the parent
stores them, and recreating them from their text does not reproduce them: LIKE copies them.)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, text

from shared.db.partitions import PARENT
from tools.seed import open_state, sql
from tools.seed.plan import BucketSeed, SeedPlan, stride


def create(
    conn: Connection,
    plan: SeedPlan,
    day: dt.date,
    id_base: int,
    table: str,
    open_table: str,
) -> None:
    """The day's events into a new table `table`, then its open state into `open_table`."""
    buckets, params = _params(plan, day, id_base)
    conn.execute(
        text(f"CREATE TABLE {table} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    conn.execute(text(sql.insert_events(table)), params)
    _open_state(conn, buckets, params, table, open_table)
    _mark_buckets(conn, plan, buckets)


def insert(
    conn: Connection,
    plan: SeedPlan,
    day: dt.date,
    id_base: int,
    open_table: str = open_state.TARGET,
) -> None:
    """INSERT the day's events into drop_events, then its open state into `open_table`."""
    buckets, params = _params(plan, day, id_base)
    conn.execute(text(sql.insert_events(PARENT)), params)
    _open_state(conn, buckets, params, PARENT, open_table)
    _mark_buckets(conn, plan, buckets)


def _params(plan: SeedPlan, day: dt.date, id_base: int) -> tuple[list[BucketSeed], dict[str, Any]]:
    buckets = [b for b in plan.buckets if b.day == day]
    params: dict[str, Any] = {
        "day": day,
        "now": plan.now,
        "venues": plan.venues,
        "space": plan.space,
        "stride": stride(plan.space),
        "ids": [b.bucket_id for b in buckets],
        "anchors": [b.anchor for b in buckets],
        "n0s": [b.n0 for b in buckets],
        "opens": [b.open_drops for b in buckets],
        "zone": plan.zone,
        "pairs": [b.pairs for b in buckets],
        "fresh": [b.fresh for b in buckets],
        "market": plan.market,
        "prime": list(plan.prime_anchors),
        "id_base": id_base,
        "mean_age": plan.mean_age_hours * 3600.0,
        "baselines": [b.baseline for b in buckets],
    }
    return buckets, params


def _open_state(
    conn: Connection,
    buckets: list[BucketSeed],
    params: dict[str, Any],
    day_table: str,
    open_table: str,
) -> None:
    """The day's open drops (from its NEW_DROP events) and baseline slots, if it has any."""
    if any(b.open_drops for b in buckets):
        statement = sql.OPEN_DROPS.replace("__OPEN_TABLE__", open_table)
        conn.execute(text(statement.replace("__DAY_TABLE__", day_table)), params)
    if any(b.baseline for b in buckets):
        conn.execute(text(sql.BASELINE.replace("__OPEN_TABLE__", open_table)), params)


def _mark_buckets(conn: Connection, plan: SeedPlan, buckets: list[BucketSeed]) -> None:
    conn.execute(
        text(sql.MARK_BUCKETS),
        {
            "now": plan.now,
            "ids": [b.bucket_id for b in buckets],
            "slots": [b.open_drops + b.baseline for b in buckets],
        },
    )
