"""Shared pieces of the benchmarks: a throw-away database, migrations, statement recording, stats.

`bench_database()` gives a fresh, empty database named `dw_bench_<random>`: on the server that
`DROPWATCH_DATABASE_URL` names (the database is dropped at the end), or else on an embedded
PostgreSQL started in a temporary directory (stopped and deleted at the end).
"""

from __future__ import annotations

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


@contextmanager
def bench_database(prefix: str = "dw_bench") -> Iterator[BenchDatabase]:
    """A fresh empty database for one benchmark run; everything is removed afterwards."""
    external = os.environ.get(EXTERNAL_URL_ENV) or None
    server: embedded.EmbeddedServer | None = None
    scratch: Path | None = None
    if external is not None:
        admin_url = external
        where = f"server {masked(external)} (DROPWATCH_DATABASE_URL)"
    else:
        scratch = Path(tempfile.mkdtemp(prefix="dropwatch-bench-"))
        server = embedded.start(scratch / "pgdata", temporary=True)
        admin_url = server.url
        where = "embedded PostgreSQL in a temporary directory"
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin_execute(admin_url, f'CREATE DATABASE "{name}"')
        try:
            yield BenchDatabase(url=with_database(admin_url, name), name=name, server=where)
        finally:
            admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        if server is not None:
            server.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


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
