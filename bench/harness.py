"""What every benchmark shares: timing, statement recording, targets, the Markdown it prints,
the chart points it hands `dropwatch bench`, and its entry point.

The databases come from `tools.database` (the tests' server and templates too). How each
benchmark measures is told in docs/performance.md; a benchmark prints its figures only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Engine, event, text

from shared.db.engine import make_engine
from shared.settings import Settings
from tools.database import PgServer
from tools.seed import SeedPlan, SeedResult, load
from tools.seed.loader import LOADERS

R = TypeVar("R")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- timing ---------------------------------------------------------------------------------


class Timer:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stopped: float | None = None

    @property
    def seconds(self) -> float:
        return (self.stopped or time.perf_counter()) - self.started

    @property
    def ms(self) -> float:
        return self.seconds * 1000.0


@contextmanager
def timed() -> Iterator[Timer]:
    timer = Timer()
    try:
        yield timer
    finally:
        timer.stopped = time.perf_counter()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), interpolated between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- statements -----------------------------------------------------------------------------


@dataclass
class Statement:
    sql: str
    seconds: float  # before_cursor_execute to after_cursor_execute: adapt, round trip, server


@dataclass
class Window:
    statements: list[Statement] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)

    def seconds(self) -> float:
        return sum(s.seconds for s in self.statements if not math.isnan(s.seconds))

    def split(self, kind: Callable[[str], str]) -> tuple[dict[str, float], dict[str, int]]:
        """ms and statements per kind of statement."""
        ms: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for s in self.statements:
            ms[kind(s.sql)] += s.seconds * 1000
            counts[kind(s.sql)] += 1
        return ms, counts


class StatementRecorder:
    """Counts and times the statements an engine sends inside `window()` blocks.

    Attach it to a sync engine (`async_engine.sync_engine` for asyncio). Pool pre-pings and
    COMMIT are not cursor executions: they are in the caller's wall time, not here."""

    _KEY = "bench_pending"

    def __init__(self, engine: Engine) -> None:
        self._current: Window | None = None
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, sql: str, *_: Any) -> None:
        entry = Statement(sql, math.nan)
        if self._current is not None:
            self._current.statements.append(entry)
        conn.info[self._KEY] = (entry, time.perf_counter())

    def _after(self, conn: Any, *_: Any) -> None:
        pending = conn.info.pop(self._KEY, None)
        if pending is not None:
            pending[0].seconds = time.perf_counter() - pending[1]

    @contextmanager
    def window(self) -> Iterator[Window]:
        self._current = Window()
        try:
            yield self._current
        finally:
            self._current = None


# --- databases ------------------------------------------------------------------------------

# The review's six drop_events indexes. Migration 0003 dropped them (no query of ours reads
# them); the original patterns read through them, so a benchmark creates them where an
# original runs (see docs/architecture.md, Review findings).
REVIEW_INDEXES = tuple(
    f"CREATE INDEX IF NOT EXISTS ix_drop_events_{name} ON drop_events ({columns})"
    for name, columns in (
        ("bucket_id", "bucket_id"),
        ("slot_id", "slot_id"),
        ("event_type", "event_type"),
        ("opened_at", "opened_at"),
        ("event_type_opened_at", "event_type, opened_at DESC"),
        ("bucket_id_event_type_opened_at", "bucket_id, event_type, opened_at DESC"),
    )
)


def engine_for(url: str, name: str = "bench", **settings: Any) -> Engine:
    """A sync engine on `url` without a statement timeout (bulk loads take a while)."""
    values: dict[str, Any] = {"db_statement_timeout_ms": 0, "db_pool_size": 8, **settings}
    return make_engine(Settings(**values), name=name, url=url)


def create_review_indexes(engine: Engine) -> float:
    """Create the review's indexes (for an original pattern); return the seconds it took."""
    with timed() as timer, engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        for ddl in REVIEW_INDEXES:
            conn.execute(text(ddl))
    return timer.seconds


def count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def vacuum(engine: Engine, what: str = "VACUUM (ANALYZE)") -> float:
    """Run VACUUM (outside a transaction); return the seconds it took."""
    with timed() as timer, engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(what))
    return timer.seconds


def seed(engine: Engine, plan: SeedPlan) -> tuple[SeedResult, str]:
    """Load `plan` with tools.seed; return its result and a line that says what it loaded."""
    log(f"loading ~{plan.events:,} drop_events")
    seeded = load(engine, plan)
    closed = count(engine, "SELECT count(*) FROM drop_events WHERE event_type = 'CLOSED'")
    past = sum(1 for d in plan.days if d < plan.today)
    return seeded, (
        f"{seeded.events:,} drop_events ({seeded.events - closed:,} NEW_DROP, {closed:,} CLOSED) "
        f"over {seeded.days} daily partitions ({past} past + {len(plan.days) - past} live days), "
        f"{plan.venues:,} venues; {seeded.open_drops + seeded.baseline:,} open_slots "
        f"({seeded.open_drops:,} open drops, {seeded.baseline:,} baseline); loaded by tools.seed "
        f"({LOADERS} days at a time) in {seeded.seconds:.1f} s = "
        f"{seeded.events_per_second:,.0f} events/s"
    )


def checkpoint(server: PgServer) -> bool:
    """An untimed CHECKPOINT, so a measurement does not pay for earlier bulk writes' flushing;
    False when the role may not run it."""
    try:
        server.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def postgres(server: PgServer, names: Sequence[str]) -> str:
    """E.g. "PostgreSQL 18.6, embedded ...; shared_buffers=128MB, jit=on"."""
    with server.database("dw_bench_info") as name:
        engine = engine_for(server.url_for(name))
        with engine.connect() as conn:
            version = str(conn.execute(text("SHOW server_version")).scalar_one()).split()[0]
            values = [f"{n}={conn.execute(text(f'SHOW {n}')).scalar_one()}" for n in names]
        engine.dispose()
    return f"PostgreSQL {version}, {server.description}; {', '.join(values)}"


def _proc(path: str, key: str) -> str:
    """The value of the first `key:` line of a /proc file ("" where there is none)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), "")


def machine(extra: str = "") -> str:
    cpus = len(os.sched_getaffinity(0))
    memory = int(_proc("/proc/meminfo", "MemTotal").split()[0] or 0) / 2**20
    return (
        f"{cpus} CPUs (nproc; {_proc('/proc/cpuinfo', 'model name')}), {memory:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}{extra}"
    )


# --- what a benchmark prints ----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str  # what must hold, e.g. "k=1000 under 150 ms"
    measured: str
    ok: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.ok is None else "PASS" if self.ok else "MISS"


def md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the first column left-aligned, the figures right-aligned."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1))]
    lines[-1] += "|"
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


class Section:
    """One benchmark's Markdown section: its command, setting, targets and tables."""

    def __init__(self, title: str, command: str, **bullets: str) -> None:
        self.lines = [f"## {title}", "", f"`{command}`", ""]
        self.lines += [f"- {key.replace('_', ' ')}: {text}" for key, text in bullets.items()]

    def add(self, *paragraphs: str) -> Section:
        for paragraph in paragraphs:
            self.lines += ["", paragraph]
        return self

    def table(self, head: Sequence[str], body: Sequence[Sequence[str]], title: str = "") -> Section:
        return self.add(*([title] if title else []), md_table(head, body))

    def targets(self, targets: Sequence[Target]) -> Section:
        rows = [[t.name, t.measured, f"**{t.verdict}**"] for t in targets]
        text = md_table(["target", "measured", "verdict"], rows)
        return self.add(text.replace("|---:|---:|", "|---|---|", 1))

    def __str__(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True)
class Point:
    """One figure at one table size, ours beside the original pattern's (for the charts)."""

    metric: str
    unit: str  # "ms" or "s" (latency) or "MB" (memory)
    size: int  # drop_events in the table
    ours: float
    original: float | None = None


def write_points(path: str | None, benchmark: str, points: Sequence[Point]) -> None:
    if not path:
        return
    finite = [p for p in points if math.isfinite(p.ours) and math.isfinite(p.original or 0.0)]
    data = {"benchmark": benchmark, "points": [dataclasses.asdict(p) for p in finite]}
    Path(path).write_text(json.dumps(data, indent=1))


# --- the entry point ------------------------------------------------------------------------


def parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=(doc or "").strip())
    out.add_argument("--markdown", action="store_true", help="(the default) print Markdown")
    out.add_argument("--json", help="also write the chart figures to this file")
    return out


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds every `with`: children stopped, databases dropped


def main(
    name: str,
    args: argparse.Namespace,
    measure: Callable[[argparse.Namespace, str], R],
    render: Callable[[R], str],
    points: Callable[[R], list[Point]],
) -> int:
    """Measure, print the section, write the points; SIGTERM cleans up as an error does."""
    argv = " ".join(sys.argv[1:])
    command = f".venv/bin/python -m bench.{name} {argv}".strip()
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        result = measure(args, command)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render(result))
    write_points(args.json, getattr(args, "points_name", name), points(result))
    return 0
