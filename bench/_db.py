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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url

from shared.db import embedded, migrate
from shared.db.engine import make_engine, to_sqlalchemy_url
from shared.settings import Settings
from tools.seed import Shape, load, make_plan
from tools.seed.loader import LOADERS

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


# The review's six drop_events indexes. Migration 0003 dropped them (no query of ours reads
# them); the original patterns read through them, so a benchmark creates them before it
# measures an original, on the database the original runs on.
REVIEW_INDEXES = (
    "CREATE INDEX IF NOT EXISTS ix_drop_events_bucket_id ON drop_events (bucket_id)",
    "CREATE INDEX IF NOT EXISTS ix_drop_events_slot_id ON drop_events (slot_id)",
    "CREATE INDEX IF NOT EXISTS ix_drop_events_event_type ON drop_events (event_type)",
    "CREATE INDEX IF NOT EXISTS ix_drop_events_opened_at ON drop_events (opened_at)",
    "CREATE INDEX IF NOT EXISTS ix_drop_events_event_type_opened_at"
    " ON drop_events (event_type, opened_at DESC)",
    "CREATE INDEX IF NOT EXISTS ix_drop_events_bucket_id_event_type_opened_at"
    " ON drop_events (bucket_id, event_type, opened_at DESC)",
)


def create_review_indexes(engine: Engine) -> float:
    """Create the review's drop_events indexes (for an original pattern); return seconds."""
    with timed() as watch, engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        for ddl in REVIEW_INDEXES:
            conn.execute(text(ddl))
    return watch.seconds


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


def busy_cpu_seconds() -> float | None:
    """CPU time this whole machine has spent busy since boot (Linux /proc/stat), all processes:
    the difference over a load is what the load cost with the database server on this machine,
    whatever the other core was doing."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (user + nice + system + irq + softirq) / ticks


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
# `load_feed_data` loads the floor experiment's data with `dropwatch seed` (services/seed): 28
# days of buckets (14 past, 14 live), 2000 venues, NEW_DROP/CLOSED pairs in `drop_events`, the
# live buckets' open state in `open_slots` (~267k open drops per 1M events, plus baseline
# slots). A fixed number of open drops (`recent`, default 2700) opened in the 5 minutes before
# `now`, whatever the history size: that is the market's current activity, so JustOpened
# answers have the same size at every data size and only the history grows.


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
) -> FeedData:
    """Seed ~`events` drop_events plus open state into a migrated, empty database; then VACUUM
    ANALYZE (as autovacuum would have by the time a real feed reads them)."""
    plan = make_plan(bench_settings(), events, now=now, venues=venues, shape=Shape(recent=recent))
    with timed() as watch:
        seeded = load(engine, plan)
        vacuum_analyze(engine)
    with engine.connect() as conn:
        closed = conn.execute(
            text("SELECT count(*) FROM drop_events WHERE event_type = 'CLOSED'")
        ).scalar_one()
    live = [b for b in plan.buckets if b.live]
    return FeedData(
        now=plan.now,
        today=plan.today,
        live_days=sorted({b.day for b in live}),
        live_bucket_ids=[b.bucket_id for b in live],
        venues=venues,
        events=seeded.events,
        new_drops=seeded.events - int(closed),
        closed=int(closed),
        open_drops=seeded.open_drops,
        baseline=seeded.baseline,
        seconds=watch.seconds,
        workers=LOADERS,
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
