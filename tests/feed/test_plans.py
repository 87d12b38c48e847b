"""Query plans of the feed's SQL at 100k open drops: index walks that stop early, no Seq Scan.

The rows are made with set-based SQL (this file is about plans, not about what the poller
writes): 100k open drops over 14 live days, ~2000 venues, opened over the 14 days before NOW
with more of them recently (opened ago = 14 days * u**3, so ~7.9k are in the default
600 s window), stored in random physical order (no help from correlation), plus 20k baseline
slots (no drop) that the partial indexes must skip, and the matching NEW_DROP events.

Each case runs `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` over exactly the SQL and parameters the
servicer uses (`services.feed.sql.build_sql` / `params`) and checks:
- no Seq Scan of `open_slots` or `drop_events` (or a partition of it) anywhere in the plan;
- the outer scan of `open_slots` (alias `o`) reads a bounded number of rows (its actual rows
  plus the rows its filters removed), per case:
  * the first pages of the default JustOpened and StillOpen, and JustOpened's second page:
    at most 2 * (limit + 1). Every row of the window passes the filters, so a newest-first
    walk stops after limit + 1 rows plus the rows the (venue, date) dedupe rejects. With ~28k
    (venue, date) pairs the expected repeats among the newest 1000 rows are about
    1000**2 / (2 * 28000) ~ 18, so 2x is a wide margin, while a plan that sorts the window
    (~7.9k rows for JustOpened, ~92k for StillOpen) exceeds it many times over.
  * filtered JustOpened, and a StillOpen page 20k rows deep: at most 2 * the rows a
    newest-first walk must visit to produce that answer (counted independently: every live
    row of the window from the page's cursor down to the answer's last row). So the cost is
    proportional to limit / selectivity, and a keyset page never re-reads the rows before its
    cursor (20k here; deep pages lose many rows to the dedupe, so 2 * (limit + 1) is not the
    right bound there).
  * StillOpen for a few venues: at most the open drops of those venues (~150), i.e. the plan
    reads those venues' rows through the (venue, date, opened_at) index instead of walking
    ~92k rows newest-first looking for them.
- the probes of the dedupe (`NOT EXISTS`, alias `n`) read at most 10 rows per outer row read
  (a (venue, date) holds ~3.6 rows on average, so an index probe reads a handful; a hash
  anti-join that reads the whole table fails this).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from services.feed import sql as feed_sql
from services.feed.paging import Boundary, Cursor
from services.feed.request import JUST_OPENED, FeedQuery, from_just_opened, from_still_open
from shared.db.buckets import ensure_live_buckets
from shared.db.engine import make_engine
from shared.gen.dropwatch.feed.v1 import feed_pb2
from shared.settings import Settings
from tests.conftest import PgServer
from tests.feed.conftest import NOW, TODAY

# Every write of the seeded data is below this commit-order horizon (xid8 ids are 64-bit).
EVERY_WRITE = Boundary(NOW, 2**62)

pytestmark = pytest.mark.slow  # the module's data set takes seconds to build

DROPS = 100_000
BASELINE = 20_000
VENUES = 2_000
DAYS = 14
SPAN_SECONDS = DAYS * 86_400
DEEP = 20_000  # depth of the deep StillOpen keyset page
FEW_VENUES = [17, 404, 1999]
FILTER_DATES = [TODAY + dt.timedelta(days=1), TODAY + dt.timedelta(days=2)]

# A pseudo-random, deterministic spread (same data, hence the same plans, on every run).
_SEED_SLOTS = """
INSERT INTO open_slots (bucket_id, slot_id, venue_id, slot_date, slot_time, seating_type,
                        party_sizes, time_slot, first_seen_at, drop_event_id, opened_at)
SELECT to_char(g.slot_date, 'YYYY-MM-DD') || '_' || g.anchor, md5(g.i::text), g.venue_id,
       g.slot_date, g.slot_time, 'Dining Room', g.sizes, g.anchor,
       g.opened_at, CASE WHEN g.i <= :drops THEN g.i END,
       CASE WHEN g.i <= :drops THEN g.opened_at END
FROM (
    SELECT s.i, s.venue_id, s.slot_date, s.slot_time, s.opened_at,
           CASE WHEN s.slot_time <= time '17:59' THEN '15:00' ELSE '19:00' END AS anchor,
           (ARRAY['{2}', '{2,4}', '{4,6}', '{2,4,6}', '{6}'])[1 + s.i % 5]::smallint[] AS sizes
    FROM (
        SELECT i,
               1 + mod(hashint4(i)::bigint + 2147483648, :venues) AS venue_id,
               CAST(:today AS date)
                   + mod(hashint4(i + 7777777)::bigint + 2147483648, :days)::int AS slot_date,
               time '13:00' + make_interval(mins => 15 * (i % 36)) AS slot_time,
               CAST(:now AS timestamptz)
                   - make_interval(secs => :span * power(i::float8 / :drops, 3)) AS opened_at
        FROM generate_series(1, :drops + :baseline) AS i
    ) s
) g
ORDER BY md5(g.i::text || 'order')
"""

_SEED_EVENTS = """
INSERT INTO drop_events (id, bucket_date, bucket_id, market, provider, slot_id, venue_id,
                         event_type, opened_at, slot_date, slot_time, seating_type, party_sizes,
                         time_slot, time_bucket, dedupe_key)
SELECT o.drop_event_id, o.slot_date, o.bucket_id, 'nyc', 'resy', o.slot_id, o.venue_id,
       'NEW_DROP', o.opened_at, o.slot_date, o.slot_time, o.seating_type, o.party_sizes,
       o.time_slot, CASE WHEN o.time_slot = '19:00' THEN 'prime' ELSE 'off_peak' END,
       'NEW_DROP:' || o.bucket_id || ':' || o.slot_id || ':' || 1
FROM open_slots o
WHERE o.drop_event_id IS NOT NULL
ORDER BY md5(o.slot_id)
"""

_SEED_VENUES = """
INSERT INTO venues (venue_id, provider, name, neighborhood, price_range, url_slug, location_code)
SELECT v, 'resy', 'Venue ' || v, 'West Village', 1 + v % 4, 'venue-' || v, 'ny'
FROM generate_series(1, :venues) AS v
"""


@pytest.fixture(scope="module")
def plan_engine(pg_server: PgServer, template_db: str) -> Iterator[Engine]:
    """One database with the 100k rows for the whole module (seeding it takes a few seconds)."""
    name = f"dw_plans_{uuid.uuid4().hex[:10]}"
    pg_server.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    engine = make_engine(Settings(), name="plans", url=pg_server.url_for(name))
    try:
        with engine.begin() as conn:
            ensure_live_buckets(
                conn, market="nyc", today=TODAY, window_days=DAYS, anchors=("15:00", "19:00")
            )
            values = {
                "drops": DROPS,
                "baseline": BASELINE,
                "venues": VENUES,
                "days": DAYS,
                "span": SPAN_SECONDS,
                "today": TODAY,
                "now": NOW,
            }
            conn.execute(text(_SEED_VENUES), values)
            conn.execute(text(_SEED_SLOTS), values)
            conn.execute(text(_SEED_EVENTS))
            conn.execute(text("ANALYZE"))
        yield engine
    finally:
        engine.dispose()
        pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------- plan reading


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


def _read(node: dict[str, Any]) -> float:
    """Rows a scan node read per loop: what it returned plus what its filters threw away."""
    return float(
        node["Actual Rows"]
        + node.get("Rows Removed by Filter", 0)
        + node.get("Rows Removed by Index Recheck", 0)
    )


@dataclass(repr=False)  # its str() is the readable tree
class Plan:
    root: dict[str, Any]

    def nodes(self) -> list[dict[str, Any]]:
        return list(_nodes(self.root))

    def __str__(self) -> str:
        """The plan as an indented tree, for assertion messages."""
        lines: list[str] = []

        def add(node: dict[str, Any], depth: int) -> None:
            where = ""
            if "Relation Name" in node:
                where = f" on {node['Relation Name']} {node.get('Alias', '')}"
            if "Index Name" in node:
                where += f" using {node['Index Name']}"
            lines.append(
                f"{'  ' * depth}{node['Node Type']}{where}: rows={node['Actual Rows']}"
                f" removed={node.get('Rows Removed by Filter', 0)} loops={node['Actual Loops']}"
                + "".join(
                    f"\n{'  ' * depth}  {key}: {node[key]}"
                    for key in ("Index Cond", "Recheck Cond", "Filter", "Join Filter")
                    if key in node
                )
            )
            for child in node.get("Plans", ()):
                add(child, depth + 1)

        add(self.root, 0)
        return "\n".join(lines)

    def seq_scans(self) -> list[str]:
        return [
            n["Relation Name"]
            for n in self.nodes()
            if n["Node Type"] == "Seq Scan"
            and (
                n["Relation Name"] in ("open_slots", "drop_events")
                or n["Relation Name"].startswith("drop_events_p")
            )
        ]

    def scans_of(self, alias: str) -> list[dict[str, Any]]:
        """The scan nodes of `open_slots` under `alias` (a bitmap scan counts its heap node)."""
        return [
            n
            for n in self.nodes()
            if n.get("Relation Name") == "open_slots" and n.get("Alias") == alias
        ]

    def outer_rows_read(self) -> float:
        (outer,) = self.scans_of("o")
        return _read(outer) * float(outer["Actual Loops"])  # loops > 1: a parallel scan

    def probe_rows_read(self) -> float:
        return sum(_read(n) * float(n["Actual Loops"]) for n in self.scans_of("n"))


def explain(conn: Connection, sql: str, values: dict[str, Any]) -> Plan:
    row = conn.execute(text("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql), values).scalar_one()
    return Plan(row[0]["Plan"])


def run(conn: Connection, query: FeedQuery, cursor: Cursor | None) -> tuple[str, dict[str, Any]]:
    """The servicer's SQL and parameters for `query` (first page, or the page after `cursor`)."""
    statement = feed_sql.build_sql(query, keyset=cursor is not None)
    return statement, feed_sql.params(query, TODAY, EVERY_WRITE, cursor)


def must_visit(conn: Connection, query: FeedQuery, after: Cursor | None, last: Any) -> int:
    """Open drops a newest-first walk visits to produce an answer ending with row `last`.

    Counted without the filters, the dedupe and the plan: every live row of the window after
    the page's cursor (if any) down to and including the answer's last row.
    """
    edge = NOW - dt.timedelta(seconds=query.age_seconds)
    clauses = [
        "drop_event_id IS NOT NULL",
        "slot_date >= :today",
        "opened_at <= :now",
        "opened_at >= :edge" if query.kind == JUST_OPENED else "opened_at < :edge",
        "(opened_at, drop_event_id) >= (:last_at, :last_id)",
    ]
    values = {"edge": edge, "today": TODAY, "now": NOW, "last_at": last[9], "last_id": last[0]}
    if after is not None:
        clauses.append("(opened_at, drop_event_id) < (:after_at, :after_id)")
        values |= {"after_at": after.opened_at, "after_id": after.event_id}
    sql = f"SELECT count(*) FROM open_slots WHERE {' AND '.join(clauses)}"
    return int(conn.execute(text(sql), values).scalar_one())


@pytest.fixture
def conn(plan_engine: Engine) -> Iterator[Connection]:
    with plan_engine.connect() as c:
        c.execute(text("SET plan_cache_mode = force_custom_plan"))  # as the feed's engine
        yield c
        c.rollback()


def check_common(plan: Plan) -> None:
    assert not plan.seq_scans(), f"Seq Scan on {plan.seq_scans()}:\n{plan}"
    assert len(plan.scans_of("o")) == 1, str(plan)
    probes = plan.probe_rows_read()
    assert probes <= 10 * plan.outer_rows_read(), f"probes read {probes} rows:\n{plan}"


def _cursor(row: Any) -> Cursor:
    # Columns of build_sql: drop_event_id first, opened_at tenth.
    return Cursor(EVERY_WRITE, row[9], row[0])


# ---------------------------------------------------------------- the cases


def test_data_is_what_the_bounds_assume(conn: Connection) -> None:
    counts = conn.execute(
        text(
            "SELECT count(*) FILTER (WHERE drop_event_id IS NOT NULL),"
            " count(*) FILTER (WHERE drop_event_id IS NOT NULL AND opened_at >= :edge),"
            " count(DISTINCT (venue_id, slot_date)) FROM open_slots"
        ),
        {"edge": NOW - dt.timedelta(seconds=600)},
    ).one()
    assert counts[0] == DROPS
    assert 7_000 < counts[1] < 9_000  # the default window holds many times the limit
    assert counts[2] > 25_000
    events = conn.execute(text("SELECT count(*) FROM drop_events")).scalar_one()
    assert events == DROPS


def test_default_just_opened_walks_about_limit_rows(conn: Connection) -> None:
    query = from_just_opened(feed_pb2.JustOpenedRequest())
    plan = explain(conn, *run(conn, query, None))
    check_common(plan)
    assert plan.outer_rows_read() <= 2 * (query.limit + 1), str(plan)


def test_filtered_just_opened_reads_in_proportion_to_its_selectivity(conn: Connection) -> None:
    query = from_just_opened(
        feed_pb2.JustOpenedRequest(
            filter=feed_pb2.FeedFilter(
                party_sizes=[2], reservation_dates=[d.isoformat() for d in FILTER_DATES]
            )
        )
    )
    sql, values = run(conn, query, None)
    rows = conn.execute(text(sql), values).all()
    assert len(rows) == query.limit + 1  # truncated: the walk really had to stop early
    visit = must_visit(conn, query, None, rows[-1])
    plan = explain(conn, sql, values)
    check_common(plan)
    assert plan.outer_rows_read() <= 2 * visit, f"must visit {visit}:\n{plan}"


def test_default_still_open_returns_a_full_page_reading_about_limit_rows(
    conn: Connection,
) -> None:
    query = from_still_open(feed_pb2.StillOpenRequest())
    assert query.limit == 1000
    sql, values = run(conn, query, None)
    rows = conn.execute(text(sql), values).all()
    assert len(rows) == query.limit + 1  # a page of `limit` items, and truncated
    plan = explain(conn, sql, values)
    check_common(plan)
    assert plan.outer_rows_read() <= 2 * (query.limit + 1), str(plan)


def test_still_open_for_a_few_venues_reads_only_their_rows(conn: Connection) -> None:
    query = from_still_open(
        feed_pb2.StillOpenRequest(filter=feed_pb2.FeedFilter(venue_ids=FEW_VENUES))
    )
    theirs = conn.execute(
        text(
            "SELECT count(*) FROM open_slots WHERE drop_event_id IS NOT NULL AND venue_id = ANY(:v)"
        ),
        {"v": FEW_VENUES},
    ).scalar_one()
    assert 0 < theirs < 500
    plan = explain(conn, *run(conn, query, None))
    check_common(plan)
    assert plan.outer_rows_read() <= theirs, f"their rows {theirs}:\n{plan}"


def test_second_just_opened_page_walks_about_limit_rows(conn: Connection) -> None:
    query = from_just_opened(feed_pb2.JustOpenedRequest())
    sql, values = run(conn, query, None)
    first = conn.execute(text(sql), values).all()
    assert len(first) == query.limit + 1
    plan = explain(conn, *run(conn, query, _cursor(first[query.limit - 1])))
    check_common(plan)
    assert plan.outer_rows_read() <= 2 * (query.limit + 1), str(plan)


def test_deep_still_open_page_does_not_reread_the_pages_before_it(conn: Connection) -> None:
    query = from_still_open(feed_pb2.StillOpenRequest())
    deep = conn.execute(
        text(
            "SELECT drop_event_id, opened_at FROM open_slots"
            " WHERE drop_event_id IS NOT NULL AND opened_at < :edge"
            " ORDER BY opened_at DESC, drop_event_id DESC OFFSET :deep LIMIT 1"
        ),
        {"edge": NOW - dt.timedelta(seconds=query.age_seconds), "deep": DEEP},
    ).one()
    cursor = Cursor(EVERY_WRITE, deep[1], deep[0])
    sql, values = run(conn, query, cursor)
    rows = conn.execute(text(sql), values).all()
    assert len(rows) == query.limit + 1
    # Deep in the list many rows lose the dedupe to a newer row of their (venue, date) on an
    # earlier page, so the walk legitimately reads more than limit + 1 rows; what it must not
    # do is read the DEEP rows before the cursor again.
    visit = must_visit(conn, query, cursor, rows[-1])
    assert visit < DEEP / 4
    plan = explain(conn, sql, values)
    check_common(plan)
    assert plan.outer_rows_read() <= 2 * visit, f"must visit {visit}:\n{plan}"
