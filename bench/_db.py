"""Shared pieces of the benchmarks: a throw-away database, migrations, statement recording, stats.

`bench_database()` gives a fresh, empty database named `dw_bench_<random>`: on the server that
`DROPWATCH_DATABASE_URL` names (the database is dropped at the end), or else on an embedded
PostgreSQL started in a temporary directory (stopped and deleted at the end).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url

from shared.db import embedded, migrate
from shared.db.buckets import bucket_id_for, ensure_live_buckets, market_today
from shared.db.engine import make_engine, to_sqlalchemy_url
from shared.db.partitions import ensure_partitions
from shared.settings import Settings

EXTERNAL_URL_ENV = "DROPWATCH_DATABASE_URL"


# --- databases -------------------------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    """The libpq URL `url` pointing at another database of the same server."""
    return (
        to_sqlalchemy_url(url)
        .set(drivername="postgresql", database=database)
        .render_as_string(hide_password=False)
    )


def masked(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def admin_execute(admin_url: str, sql: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    libpq = with_database(admin_url, make_url(admin_url).database or "postgres")
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(sql.encode())


@dataclass(frozen=True)
class BenchDatabase:
    url: str  # libpq URL of the fresh database
    name: str
    server: str  # human description, password masked


@dataclass(frozen=True)
class BenchServer:
    admin_url: str  # libpq URL of a database to run CREATE/DROP DATABASE from
    description: str  # human description, password masked


@contextmanager
def bench_server() -> Iterator[BenchServer]:
    """The server benchmarks create their databases on: `DROPWATCH_DATABASE_URL`'s, or else an
    embedded PostgreSQL in a temporary directory (stopped and deleted at the end)."""
    external = os.environ.get(EXTERNAL_URL_ENV) or None
    if external is not None:
        yield BenchServer(external, f"server {masked(external)} (DROPWATCH_DATABASE_URL)")
        return
    scratch = Path(tempfile.mkdtemp(prefix="dropwatch-bench-"))
    server: embedded.EmbeddedServer | None = None
    try:
        server = embedded.start(scratch / "pgdata", temporary=True)
        yield BenchServer(server.url, "embedded PostgreSQL in a temporary directory")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def bench_database(
    prefix: str = "dw_bench", server: BenchServer | None = None
) -> Iterator[BenchDatabase]:
    """A fresh empty database for one benchmark run; everything is removed afterwards.

    Without `server`, a server is chosen (or started) for this database alone (`bench_server`).
    """
    if server is None:
        with bench_server() as own, bench_database(prefix, own) as db:
            yield db
        return
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_execute(server.admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield BenchDatabase(
            url=with_database(server.admin_url, name), name=name, server=server.description
        )
    finally:
        admin_execute(server.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_settings(**overrides: Any) -> Settings:
    """Settings for benchmark engines (the URL is always passed to the engine explicitly)."""
    return Settings(**overrides)


def migrate_to_head(url: str) -> None:
    engine = make_engine(bench_settings(), name="bench-migrate", url=url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class ServerInfo:
    version: str  # e.g. "18.6"
    full: str  # SELECT version()
    settings: dict[str, str]


def server_info(engine: Engine) -> ServerInfo:
    names = ("shared_buffers", "work_mem", "synchronous_commit", "fsync", "jit")
    with engine.connect() as conn:
        version = str(conn.execute(text("SHOW server_version")).scalar_one())
        full = str(conn.execute(text("SELECT version()")).scalar_one())
        values = {n: str(conn.execute(text(f"SHOW {n}")).scalar_one()) for n in names}
    return ServerInfo(version=version.split()[0], full=full, settings=values)


# --- statements --------------------------------------------------------------------------------


@dataclass
class Statement:
    sql: str
    seconds: float
    parameters: Any = None


@dataclass
class Window:
    """The statements executed while the window was open, with their time (incl. round trip)."""

    statements: list[Statement] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)

    def seconds(self, predicate: Any = None) -> float:
        """Total time of the (matching) statements; a failed statement counts as 0."""
        return sum(
            s.seconds
            for s in self.statements
            if not math.isnan(s.seconds) and (predicate is None or predicate(s.sql))
        )


class StatementRecorder:
    """Counts and times the statements an engine sends, inside `window()` blocks only.

    Attach it to the *sync* engine (`async_engine.sync_engine` for an asyncio engine). Pool
    pre-pings and COMMIT are not cursor executions, so they are not counted (their time is in
    the caller's wall-clock figure).
    """

    _KEY = "dw_bench_pending"

    def __init__(self, engine: Engine, *, keep_parameters: bool = False) -> None:
        self._current: Window | None = None
        self.keep_parameters = keep_parameters
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        # Counted here, when the statement is sent; its time is filled in by `_after`.
        entry = Statement(statement, math.nan, parameters if self.keep_parameters else None)
        if self._current is not None:
            self._current.statements.append(entry)
        conn.info[self._KEY] = (entry, time.perf_counter())

    def _after(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        pending = conn.info.pop(self._KEY, None)
        if pending is not None:
            entry, started = pending
            entry.seconds = time.perf_counter() - started

    @contextmanager
    def window(self) -> Iterator[Window]:
        window = Window()
        self._current = window
        try:
            yield window
        finally:
            self._current = None


# --- timing and stats ------------------------------------------------------------------------


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stopped: float | None = None

    def stop(self) -> float:
        self.stopped = time.perf_counter()
        return self.seconds

    @property
    def seconds(self) -> float:
        end = self.stopped if self.stopped is not None else time.perf_counter()
        return end - self.started

    @property
    def ms(self) -> float:
        return self.seconds * 1000.0


@contextmanager
def timed() -> Iterator[Stopwatch]:
    watch = Stopwatch()
    try:
        yield watch
    finally:
        watch.stop()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- machine ---------------------------------------------------------------------------------


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return None


# --- feed data -------------------------------------------------------------------------------
#
# `load_feed_data` fills a migrated database with what the feed reads: 28 days of buckets (14
# past, 14 live), ~2000 venues, NEW_DROP/CLOSED pairs in `drop_events`, and the live buckets'
# open state in `open_slots` (open drops with `drop_event_id`/`opened_at`, plus baseline slots).
# A fixed number of open drops (`recent`, default 2700) opened in the 5 minutes before `now`,
# whatever the history size: that is the market's current activity, so JustOpened answers have
# the same size at every data size and only the history grows.

FEED_MARKET = "nyc"
FEED_PROVIDER = "resy"
FEED_PAST_DAYS = 14
FEED_LIVE_DAYS = 14
FEED_SEATINGS = ("Dining Room", "Bar", "Patio")
FEED_TIMES = 17  # anchor - 2h .. anchor + 2h, every 15 minutes
FEED_NEIGHBORHOODS = ("SoHo", "Tribeca", "West Village", "Williamsburg", "Harlem", "Chelsea")
FEED_OPEN_RATIO = 0.267  # currently open drops per drop_event (the floor experiment's 267k/1M)
FEED_BASELINE_RATIO = 0.125  # baseline slots per open drop, in every live bucket
FEED_MEAN_AGE_HOURS = 24.0  # age of the older open drops: exponential, cut at the bucket window


@dataclass(frozen=True)
class FeedData:
    now: dt.datetime  # "now" the open drops' ages are relative to
    today: dt.date  # in the market's zone
    live_days: list[dt.date]
    live_bucket_ids: list[str]
    venues: int
    events: int
    new_drops: int
    closed: int
    open_drops: int  # open_slots rows with a drop
    baseline: int  # open_slots rows without one (baseline slots)
    seconds: float  # the whole load, incl. VACUUM ANALYZE
    workers: int


def _feed_unit(n: str, salt: int) -> str:
    """A deterministic pseudo-random number in [0, 1) from the integer expression `n`."""
    return f"((hashint8extended({n}, {salt}) & 281474976710655)::float8 / 281474976710656.0)"


def _feed_stride(space: int) -> int:
    """A multiplier coprime with `space`: i -> i * stride % space scatters 0.. over every slot."""
    stride = 7919
    while math.gcd(stride, space) != 1:
        stride += 2
    return stride


def _feed_slot_sql(s: str, day: str, anchor: str, venues: int) -> str:
    """Select-list of the slot with index `s` (0 .. venues * TIMES * 3 - 1) of a bucket."""
    venue = f"(1 + ({s}) % {venues})"
    slot_time = (
        f"(CAST({anchor} AS time) - interval '2 hours'"
        f" + ((({s}) / {venues}) % {FEED_TIMES}) * interval '15 minutes')"
    )
    seatings = ", ".join(f"'{name}'" for name in FEED_SEATINGS)
    seating = f"((ARRAY[{seatings}])[({s}) / {venues * FEED_TIMES} + 1])"
    key = (
        f"'{FEED_PROVIDER}|' || {venue} || '|' || to_char({day} + {slot_time}, "
        f"'YYYY-MM-DD\"T\"HH24:MI') || '|' || lower({seating})"
    )
    return (
        f"{venue} AS venue_id, {slot_time} AS slot_time, {seating} AS seating_type, "
        f"md5({key}) AS slot_id"
    )


def _feed_events_sql(venues: int, zone: str) -> str:
    space = venues * FEED_TIMES * len(FEED_SEATINGS)
    stride = _feed_stride(space)
    mean = FEED_MEAN_AGE_HOURS * 3600
    return f"""
WITH b AS (
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:days AS date[]), CAST(:anchors AS text[]),
                         CAST(:n0s AS bigint[]), CAST(:pairs AS int[]), CAST(:opens AS int[]),
                         CAST(:fresh AS int[]))
         AS b(bucket_id, day, anchor, n0, pairs, opens, fresh)
),
g AS MATERIALIZED (
    SELECT x.*, {_feed_slot_sql("x.s", "x.day", "x.anchor", venues)}
    FROM (
        SELECT b.bucket_id, b.day, b.anchor, b.n0 + g.i + 1 AS n,
               g.i < b.opens AS is_open, g.i < b.fresh AS is_fresh,
               CASE WHEN g.i < b.opens THEN ((b.n0 % {space}) + g.i) * {stride} % {space}
                    ELSE (hashint8extended(b.n0 + g.i, 11) & 2147483647) % {space}
               END AS s,
               t.ts - interval '14 days' AS wstart,
               least(t.ts, CAST(:now AS timestamptz)) AS wend,
               {_feed_unit("b.n0 + g.i", 12)} AS r1, {_feed_unit("b.n0 + g.i", 13)} AS r2,
               {_feed_unit("b.n0 + g.i", 14)} AS r3
        FROM b
        CROSS JOIN LATERAL generate_series(0, b.pairs - 1) AS g(i)
        CROSS JOIN LATERAL (
            SELECT (b.day + CAST(b.anchor AS time)) AT TIME ZONE '{zone}' AS ts
        ) t
    ) x
),
q AS MATERIALIZED (
    SELECT g.*, o.opened_at,
           least(o.opened_at + make_interval(secs => 30 - ln(1 - g.r2) * 900), g.wend)
               AS closed_at,
           CASE WHEN g.r3 < 0.45 THEN CAST('{{2}}' AS smallint[])
                WHEN g.r3 < 0.8 THEN CAST('{{2,4}}' AS smallint[])
                ELSE CAST('{{4}}' AS smallint[]) END AS sizes
    FROM g
    CROSS JOIN LATERAL (
        SELECT greatest(60.0, extract(epoch FROM CAST(:now AS timestamptz)
                                      - interval '5 minutes' - g.wstart)) AS span
    ) l
    CROSS JOIN LATERAL (
        SELECT CASE
            WHEN g.is_fresh THEN CAST(:now AS timestamptz) - g.r1 * interval '5 minutes'
            WHEN g.is_open THEN CAST(:now AS timestamptz) - interval '5 minutes'
                 - make_interval(secs => -{mean} * ln(1 - g.r1 * (1 - exp(-l.span / {mean}))))
            ELSE g.wstart + g.r1 * (g.wend - g.wstart)
        END AS opened_at
    ) o
),
ev AS (
    INSERT INTO drop_events (id, bucket_date, bucket_id, market, provider, slot_id, venue_id,
        event_type, opened_at, closed_at, drop_duration_seconds, slot_date, slot_time,
        seating_type, party_sizes, time_slot, time_bucket, dedupe_key, drop_event_id)
    SELECT CASE WHEN e.closed THEN 2 * q.n ELSE 2 * q.n - 1 END,
           q.day, q.bucket_id, '{FEED_MARKET}', '{FEED_PROVIDER}', q.slot_id, q.venue_id,
           CASE WHEN e.closed THEN 'CLOSED' ELSE 'NEW_DROP' END,
           q.opened_at,
           CASE WHEN e.closed THEN q.closed_at END,
           CASE WHEN e.closed THEN extract(epoch FROM q.closed_at - q.opened_at) END,
           q.day, q.slot_time, q.seating_type, q.sizes, q.anchor,
           CASE WHEN q.anchor = :prime THEN 'prime' ELSE 'off_peak' END,
           CASE WHEN e.closed THEN 'CLOSED:' || (2 * q.n - 1)
                ELSE 'NEW_DROP:' || q.bucket_id || ':' || q.slot_id || ':' || q.n END,
           CASE WHEN e.closed THEN 2 * q.n - 1 END
    FROM q CROSS JOIN (VALUES (false), (true)) AS e(closed)
    WHERE NOT (e.closed AND q.is_open)
)
INSERT INTO open_slots (bucket_id, slot_id, venue_id, slot_date, slot_time, seating_type,
                        party_sizes, time_slot, first_seen_at, drop_event_id, opened_at)
SELECT q.bucket_id, q.slot_id, q.venue_id, q.day, q.slot_time, q.seating_type, q.sizes,
       q.anchor, q.opened_at, 2 * q.n - 1, q.opened_at
FROM q WHERE q.is_open
"""


def _feed_baseline_sql(venues: int) -> str:
    space = venues * FEED_TIMES * len(FEED_SEATINGS)
    stride = _feed_stride(space)
    return f"""
WITH b AS (
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:days AS date[]), CAST(:anchors AS text[]),
                         CAST(:n0s AS bigint[]), CAST(:opens AS int[]), CAST(:counts AS int[]))
         AS b(bucket_id, day, anchor, n0, opens, cnt)
),
s AS MATERIALIZED (
    SELECT x.bucket_id, x.day, x.anchor, {_feed_slot_sql("x.s", "x.day", "x.anchor", venues)}
    FROM (
        SELECT b.*, ((b.n0 % {space}) + b.opens + g.j) * {stride} % {space} AS s
        FROM b CROSS JOIN LATERAL generate_series(0, b.cnt - 1) AS g(j)
    ) x
),
bl AS (
    INSERT INTO baseline_slots (bucket_id, slot_id) SELECT bucket_id, slot_id FROM s
)
INSERT INTO open_slots (bucket_id, slot_id, venue_id, slot_date, slot_time, seating_type,
                        party_sizes, time_slot, first_seen_at, drop_event_id, opened_at)
SELECT s.bucket_id, s.slot_id, s.venue_id, s.day, s.slot_time, s.seating_type,
       CAST('{{2,4}}' AS smallint[]), s.anchor, CAST(:now AS timestamptz) - interval '1 day',
       NULL, NULL
FROM s
"""


def _feed_venues_sql(venues: int) -> str:
    hoods = ", ".join(f"'{n}'" for n in FEED_NEIGHBORHOODS)
    return f"""
INSERT INTO venues (venue_id, provider, name, neighborhood, price_range, url_slug, location_code)
SELECT g, '{FEED_PROVIDER}', 'Venue ' || g, (ARRAY[{hoods}])[g % {len(FEED_NEIGHBORHOODS)} + 1],
       1 + g % 4, 'venue-' || g, 'ny'
FROM generate_series(1, {venues}) AS g
"""


_FEED_PAST_BUCKETS = """
INSERT INTO discovery_buckets (bucket_id, market, date_str, bucket_date, time_slot)
SELECT b.id, :market, to_char(b.day, 'YYYY-MM-DD'), b.day, b.anchor
FROM unnest(CAST(:ids AS text[]), CAST(:days AS date[]), CAST(:anchors AS text[]))
     AS b(id, day, anchor)
ON CONFLICT (bucket_id) DO NOTHING
"""

_FEED_MARK_BUCKETS = """
UPDATE discovery_buckets b
SET baseline_polls = 3, snapshot_version = 1, last_polled_at = :now,
    last_healthy_poll_at = CASE WHEN b.bucket_date >= :today THEN :now END,
    last_outcome = 'healthy',
    last_slot_count = (SELECT count(*) FROM open_slots o WHERE o.bucket_id = b.bucket_id),
    next_poll_at = CAST(:now AS timestamptz) + interval '1 hour'
"""


def vacuum_analyze(engine: Engine, tables: Sequence[str] = ()) -> None:
    """VACUUM (ANALYZE) the tables (all when none are named), outside a transaction."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text(f"VACUUM (ANALYZE) {', '.join(tables)}".rstrip()))


def load_feed_data(
    engine: Engine,
    events: int,
    *,
    now: dt.datetime | None = None,
    venues: int = 2000,
    recent: int = 2700,
    workers: int | None = None,
) -> FeedData:
    """Load ~`events` drop_events plus open state for the feed, set-based; then VACUUM ANALYZE.

    `engine` points at a migrated, empty database; one transaction per reservation day, up to
    `workers` (default: CPUs, at most 4) days at a time.
    """
    settings = Settings()
    anchors = tuple(settings.anchors)
    prime = settings.prime_anchors[0] if settings.prime_anchors else anchors[-1]
    now = now if now is not None else dt.datetime.now(dt.UTC)
    today = market_today(settings.zone, now)
    days = [today + dt.timedelta(days=d) for d in range(-FEED_PAST_DAYS, FEED_LIVE_DAYS)]
    live = [d for d in days if d >= today]
    n_live = len(live) * len(anchors)
    space = venues * FEED_TIMES * len(FEED_SEATINGS)
    opens = max(1, round(FEED_OPEN_RATIO * events / n_live))
    base = round(opens * FEED_BASELINE_RATIO)
    if opens + base > space:
        raise ValueError(f"{events} events need more slots per bucket than {space}")
    fresh = min(opens, math.ceil(recent / n_live))
    # events = 2 * pairs * all buckets - open drops (an open drop has no CLOSED).
    pairs = max(opens, math.ceil((events + opens * n_live) / (2 * len(days) * len(anchors))))
    rows = []  # (bucket_id, day, anchor, n0, pairs, opens, fresh)
    n0 = 0
    for day in days:
        for anchor in anchors:
            is_live = day >= today
            rows.append(
                (
                    bucket_id_for(day, anchor),
                    day,
                    anchor,
                    n0,
                    pairs,
                    opens if is_live else 0,
                    fresh if is_live else 0,
                )
            )
            n0 += pairs
    workers = workers or max(1, min(cpu_count(), 4))
    events_sql = text(_feed_events_sql(venues, settings.market_timezone))
    with timed() as watch:
        with engine.begin() as conn:
            ensure_partitions(conn, days)
            ensure_live_buckets(
                conn,
                market=FEED_MARKET,
                today=today,
                window_days=FEED_LIVE_DAYS,
                anchors=anchors,
            )
            past = [r for r in rows if r[1] < today]
            conn.execute(
                text(_FEED_PAST_BUCKETS),
                {
                    "market": FEED_MARKET,
                    "ids": [r[0] for r in past],
                    "days": [r[1] for r in past],
                    "anchors": [r[2] for r in past],
                },
            )
            conn.execute(text(_feed_venues_sql(venues)))

        def load_day(day: dt.date) -> None:
            chunk = [r for r in rows if r[1] == day]
            with engine.begin() as conn:
                conn.execute(
                    events_sql,
                    {
                        "ids": [r[0] for r in chunk],
                        "days": [r[1] for r in chunk],
                        "anchors": [r[2] for r in chunk],
                        "n0s": [r[3] for r in chunk],
                        "pairs": [r[4] for r in chunk],
                        "opens": [r[5] for r in chunk],
                        "fresh": [r[6] for r in chunk],
                        "now": now,
                        "prime": prime,
                    },
                )

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(load_day, days))

        live_rows = [r for r in rows if r[1] >= today]
        with engine.begin() as conn:
            conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('drop_events', 'id'), "
                    "(SELECT max(id) FROM drop_events))"
                )
            )
            if base:
                conn.execute(
                    text(_feed_baseline_sql(venues)),
                    {
                        "ids": [r[0] for r in live_rows],
                        "days": [r[1] for r in live_rows],
                        "anchors": [r[2] for r in live_rows],
                        "n0s": [r[3] for r in live_rows],
                        "opens": [r[5] for r in live_rows],
                        "counts": [base for _ in live_rows],
                        "now": now,
                    },
                )
            conn.execute(text(_FEED_MARK_BUCKETS), {"now": now, "today": today})
        vacuum_analyze(engine)
    with engine.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                text("SELECT event_type, count(*) FROM drop_events GROUP BY event_type")
            ).all()
        )
        open_drops, baseline = conn.execute(
            text("SELECT count(drop_event_id), count(*) - count(drop_event_id) FROM open_slots")
        ).one()
    new_drops = int(counts.get("NEW_DROP", 0))
    closed = int(counts.get("CLOSED", 0))
    return FeedData(
        now=now,
        today=today,
        live_days=live,
        live_bucket_ids=[r[0] for r in live_rows],
        venues=venues,
        events=new_drops + closed,
        new_drops=new_drops,
        closed=closed,
        open_drops=int(open_drops),
        baseline=int(baseline),
        seconds=watch.seconds,
        workers=workers,
    )


def refresh_recent(engine: Engine, data: FeedData, hours: float = 1.0) -> FeedData:
    """Move the last `hours` of activity forward to the real now (a load takes a while), so
    "opened in the last 5 minutes" holds when the measurement starts; then VACUUM ANALYZE."""
    now = dt.datetime.now(dt.UTC)
    delta = now - data.now
    edge = data.now - dt.timedelta(hours=hours)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE drop_events SET opened_at = opened_at + :delta,"
                " closed_at = closed_at + :delta"
                " WHERE bucket_date >= :today AND opened_at >= :edge"
            ),
            {"delta": delta, "today": data.today, "edge": edge},
        )
        conn.execute(
            text(
                "UPDATE open_slots SET opened_at = opened_at + :delta,"
                " first_seen_at = first_seen_at + :delta"
                " WHERE drop_event_id IS NOT NULL AND opened_at >= :edge"
            ),
            {"delta": delta, "edge": edge},
        )
        conn.execute(
            text(
                "UPDATE discovery_buckets SET last_polled_at = :now, last_healthy_poll_at = :now"
                " WHERE bucket_date >= :today"
            ),
            {"now": now, "today": data.today},
        )
    vacuum_analyze(engine, ("open_slots", "drop_events", "discovery_buckets"))
    return dataclasses.replace(data, now=now)
