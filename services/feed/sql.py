"""The feed's SQL: the list query built from a request's filters, and its small companions.

Both lists read `open_slots` (the poller's current state), never the event history. The shape
keeps the cost flat as data grows: walk `ix_open_slots_opened_at` newest first and keep a row
only if no newer row passes the same filters for its (venue, date) (`NOT EXISTS`, probed on
`ix_open_slots_venue_date_opened`), so the scan stops after about LIMIT rows. (With date
filters the planner may prefer a hash anti-join over the whole JustOpened window: bounded by
the window, but ~20 ms at 1M events; see docs/performance.md.) A request reads at most
`limit + 1` rows (the extra one says whether the answer was truncated).

Every shape `build_sql` can produce is kept as reviewed text in tests/feed/query_shapes/, so a
change to it shows up in review as a SQL diff. `store.py` runs these statements.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import text

from services.feed.paging import Boundary, Cursor
from services.feed.request import JUST_OPENED, FeedQuery
from shared.db.contracts import FEED_CHANNEL

# Bounds one request's statements by the caller's deadline (for this transaction only).
SET_STATEMENT_TIMEOUT = text("SELECT set_config('statement_timeout', :ms, true)")

# The commit-order horizon: the oldest transaction id still in flight. Every transaction below
# it has ended, so the rows it reveals are final: later pages (and a stream) that keep this
# horizon see exactly the same writes, whatever commits meanwhile (docs/architecture.md,
# "Commit order"). With the next transaction id: the distance is how far the feed's view lags.
HORIZON = text(
    "SELECT CAST(pg_snapshot_xmin(s) AS text), CAST(pg_snapshot_xmax(s) AS text)"
    " FROM pg_current_snapshot() AS s"
)

# The latest committed healthy poll of a live bucket: what an answer reflects.
DATA_AS_OF = text(
    "SELECT max(last_healthy_poll_at) FROM discovery_buckets WHERE bucket_date >= :today"
)

# The poller notifies here when a write opened or closed slots.
LISTEN = f"LISTEN {FEED_CHANNEL}"

_COLUMNS = (
    "o.drop_event_id, o.slot_id, o.bucket_id, o.venue_id, o.slot_date, o.slot_time,\n"
    "       o.seating_type, o.party_sizes, o.time_slot, o.opened_at,\n"
    "       v.name, v.neighborhood, v.price_range, v.url_slug, v.location_code"
)


def _filters(alias: str, query: FeedQuery) -> list[str]:
    """The same predicates for the row and for its 'is there a newer one?' probe."""
    a = alias
    clauses = [
        f"{a}.drop_event_id IS NOT NULL",
        f"{a}.slot_date >= :today",
        f"{a}.opened_at <= :snapshot",
        f"({a}.xact_id IS NULL OR {a}.xact_id < CAST(:horizon AS xid8))",
    ]
    if query.party_sizes:
        # Per requested size: a size added to an open slot (SIZE_OPEN) opened then, for parties
        # of that size; NULL = since the slot opened (docs/architecture.md, The poller).
        recent = (
            f"EXISTS (SELECT 1 FROM unnest({a}.party_sizes, {a}.size_opened_at) AS p(size, at)"
            f" WHERE p.size = ANY(CAST(:sizes AS smallint[]))"
            f" AND coalesce(p.at, {a}.opened_at) >= :window_edge)"
        )
        clauses.append(recent if query.kind == JUST_OPENED else f"NOT {recent}")
    elif query.kind == JUST_OPENED:
        clauses.append(f"{a}.opened_at >= :window_edge")
    else:
        clauses.append(f"{a}.opened_at < :window_edge")
    if query.dates:
        clauses.append(f"{a}.slot_date = ANY(:dates)")
    if query.party_sizes:
        clauses.append(f"{a}.party_sizes && CAST(:sizes AS smallint[])")
    if query.time_from is not None:
        clauses.append(f"{a}.slot_time >= :time_from")
    if query.time_to is not None:
        clauses.append(f"{a}.slot_time <= :time_to")
    if query.time_slots:
        clauses.append(f"{a}.time_slot = ANY(:time_slots)")
    if query.venue_ids:
        clauses.append(f"{a}.venue_id = ANY(:venue_ids)")
    return clauses


def build_sql(query: FeedQuery, keyset: bool) -> str:
    """The list query for `query`, with `:name` placeholders; `keyset` for a page after the
    first (its rows come after the cursor's (opened_at, event id))."""
    where = _filters("o", query)
    if keyset:
        where.append("(o.opened_at, o.drop_event_id) < (:after_opened_at, :after_event_id)")
    if query.dedupe:
        newer = "\n      AND ".join(_filters("n", query))
        where.append(
            "NOT EXISTS (\n"
            "    SELECT 1 FROM open_slots n\n"
            "    WHERE n.venue_id = o.venue_id AND n.slot_date = o.slot_date\n"
            "      AND (n.opened_at, n.drop_event_id) > (o.opened_at, o.drop_event_id)\n"
            f"      AND {newer}\n"
            "  )"
        )
    conditions = "\n  AND ".join(where)
    return (
        f"SELECT {_COLUMNS}\n"
        "FROM open_slots o LEFT JOIN venues v ON v.venue_id = o.venue_id\n"
        f"WHERE {conditions}\n"
        "ORDER BY o.opened_at DESC, o.drop_event_id DESC\n"
        "LIMIT :fetch"
    )


def params(
    query: FeedQuery, today: dt.date, boundary: Boundary, cursor: Cursor | None
) -> dict[str, Any]:
    """The values of `build_sql`'s placeholders (unused ones are harmless)."""
    values: dict[str, Any] = {
        "today": today,
        "snapshot": boundary.at,
        "horizon": str(boundary.horizon),
        "window_edge": boundary.at - dt.timedelta(seconds=query.age_seconds),
        "dates": list(query.dates),
        "sizes": list(query.party_sizes),
        "time_from": query.time_from,
        "time_to": query.time_to,
        "time_slots": list(query.time_slots),
        "venue_ids": list(query.venue_ids),
        "fetch": query.limit + 1,
    }
    if cursor is not None:
        values["after_opened_at"] = cursor.opened_at
        values["after_event_id"] = cursor.event_id
    return values
