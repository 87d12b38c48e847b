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
    return clauses + slot_filters(a, query, f"{a}.party_sizes")


def slot_filters(a: str, query: FeedQuery, sizes: str) -> list[str]:
    """The request's filters on a slot (alias `a`, party sizes in the expression `sizes`):
    shared by the lists and the change reads."""
    clauses = []
    if query.dates:
        clauses.append(f"{a}.slot_date = ANY(:dates)")
    if query.party_sizes:
        clauses.append(f"{sizes} && CAST(:sizes AS smallint[])")
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


# ---- Change cursor (#15): ListChanges and WatchDrops read drop_events in commit order ----
# docs/architecture.md, "Change cursor and ListChanges". One range scan of
# ix_drop_events_xact_id_id per day partition (migration 0011), merged in (xact_id, id) order
# and stopped after LIMIT rows; `:horizon` (the oldest transaction in flight, taken by
# `HORIZON` just before) keeps out transactions that could still commit below the position.
#
# What the rows hold (services/poller/sql/write.py, WRITE_POLL): NEW_DROP: the slot as it opened.
# CLOSED: the slot, its drop's opened_at, closed_at, duration, `drop_event_id` = the NEW_DROP,
# and `party_sizes` as they were when it closed (the opening's sizes: `c.opening_sizes`, by
# primary key: the NEW_DROP is in the same day partition). SIZE_OPEN / SIZE_CLOSE: the sizes added /
# removed (not the slot's sizes), `drop_event_id`. The sizes after a change (`c.sizes`) are
# the open slot's when that row was last written by the same transaction (exact); otherwise
# (changed again or closed since) the NEW_DROP's sizes with this event applied. A resize of a
# slot that is not a drop (`drop_event_id` NULL: the baseline) is not a change of the feed.

_CHANGE_COLUMNS = (
    "e.id, e.event_type, CAST(e.xact_id AS text), e.bucket_id, e.slot_id, e.venue_id,\n"
    "       e.slot_date, e.slot_time, e.seating_type, e.party_sizes, e.time_slot,\n"
    "       e.opened_at, e.closed_at, e.drop_duration_seconds, e.drop_event_id, e.created_at,\n"
    "       c.sizes, c.drop_opened_at, c.opening_sizes,\n"
    "       v.name, v.neighborhood, v.price_range, v.url_slug, v.location_code"
)

_SIZES_AFTER = """LEFT JOIN LATERAL (
    SELECT CASE WHEN e.event_type <> 'CLOSED' THEN coalesce(
        (SELECT o.party_sizes FROM open_slots o
         WHERE o.bucket_id = e.bucket_id AND o.slot_id = e.slot_id
           AND o.drop_event_id = e.drop_event_id AND o.xact_id = e.xact_id),
        ARRAY(SELECT DISTINCT x FROM unnest(n.party_sizes || e.party_sizes) AS x
              WHERE e.event_type = 'SIZE_OPEN' OR x <> ALL(e.party_sizes) ORDER BY x)
    ) END AS sizes, n.opened_at AS drop_opened_at, n.party_sizes AS opening_sizes
    FROM drop_events n
    WHERE e.event_type <> 'NEW_DROP'
      AND n.bucket_date = e.bucket_date AND n.id = e.drop_event_id
) c ON true"""

# A change's slot sizes for the party-size filter: before or after a sizes change (after a
# SIZE_CLOSE plus what it removed; after a SIZE_OPEN already holds what it added); for a
# closing, as it opened and as it was when it closed.
_CHANGE_SIZES = (
    "(CASE WHEN e.event_type = 'SIZE_OPEN' THEN c.sizes"
    " WHEN e.event_type = 'SIZE_CLOSE' THEN c.sizes || e.party_sizes"
    " WHEN e.event_type = 'CLOSED' THEN e.party_sizes || c.opening_sizes"
    " ELSE e.party_sizes END)"
)


def build_changes_sql(query: FeedQuery | None, exclusion: bool) -> str:
    """The changes after `(:after_xact, :after_id)` below `:horizon`, `:fetch` at most;
    `query` None = unfiltered (the stream hub); `exclusion` skips the transactions an initial
    state already reflected (below `:skip_below` and not in `:skip_except`)."""
    where = [
        "(e.xact_id, e.id) > (CAST(:after_xact AS xid8), :after_id)",
        "e.xact_id < CAST(:horizon AS xid8)",
        "(e.event_type = 'NEW_DROP' OR e.drop_event_id IS NOT NULL)",
    ]
    if exclusion:
        where.append(
            "(e.xact_id >= CAST(:skip_below AS xid8)"
            " OR e.xact_id = ANY(CAST(:skip_except AS xid8[])))"
        )
    if query is not None:
        where += slot_filters("e", query, _CHANGE_SIZES)
    conditions = "\n  AND ".join(where)
    return (
        f"SELECT {_CHANGE_COLUMNS}\n"
        f"FROM drop_events e\n{_SIZES_AFTER}\n"
        "LEFT JOIN venues v ON v.venue_id = e.venue_id\n"
        f"WHERE {conditions}\n"
        "ORDER BY e.xact_id, e.id\n"
        "LIMIT :fetch"
    )


def filter_params(query: FeedQuery | None) -> dict[str, Any]:
    """The values of `slot_filters`' placeholders."""
    if query is None:
        return {}
    return {
        "dates": list(query.dates),
        "sizes": list(query.party_sizes),
        "time_from": query.time_from,
        "time_to": query.time_to,
        "time_slots": list(query.time_slots),
        "venue_ids": list(query.venue_ids),
    }


# The initial state (REPEATABLE READ): the snapshot its rows are read in, and the open drops.
SET_REPEATABLE_READ = text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
SNAPSHOT = text(
    "SELECT CAST(pg_snapshot_xmin(s) AS text), CAST(pg_snapshot_xmax(s) AS text),"
    " ARRAY(SELECT CAST(x AS text) FROM pg_snapshot_xip(s) AS x), now()"
    " FROM pg_current_snapshot() AS s"
)


def build_open_drops_sql(query: FeedQuery | None) -> str:
    """Every open drop matching `query` whose slot is on or after `:today`, oldest first."""
    where = ["o.drop_event_id IS NOT NULL", "o.slot_date >= :today"]
    if query is not None:
        where += slot_filters("o", query, "o.party_sizes")
    conditions = "\n  AND ".join(where)
    return (
        f"SELECT {_COLUMNS}\n"
        "FROM open_slots o LEFT JOIN venues v ON v.venue_id = o.venue_id\n"
        f"WHERE {conditions}\n"
        "ORDER BY o.opened_at, o.drop_event_id"
    )


# The retention floor: the highest xact_id the maintenance job removed (migration 0011).
CHANGE_FLOOR = text("SELECT CAST(pruned_through AS text), pruned_day, pruned_at FROM change_floor")

# The read's horizon (see HORIZON) and the time the changes are as of, in one statement.
CHANGE_HORIZON = text("SELECT CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text), now()")
