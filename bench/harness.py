"""What every benchmark shares: timing, recording, child processes, targets, Markdown, main."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import Engine, event, text

from shared.db.engine import make_engine
from shared.db.urls import libpq_url
from shared.settings import Settings
from tools.database import PgServer, pg_server
from tools.seed import SeedPlan, SeedResult, load
from tools.seed.loader import LOADERS

REPO = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def busy_cpu_seconds() -> float:
    """The machine's busy CPU seconds since boot (/proc/stat), the database server included."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Timer:
    """The wall time (and the machine's busy CPU time) of a `with Timer() as timer:` block."""

    def __enter__(self) -> Timer:
        self.started, self.stopped, self.cpu = time.perf_counter(), 0.0, busy_cpu_seconds()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped, self.cpu = time.perf_counter(), busy_cpu_seconds() - self.cpu

    @property
    def seconds(self) -> float:
        return (self.stopped or time.perf_counter()) - self.started

    @property
    def ms(self) -> float:
        return self.seconds * 1000.0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], p: int) -> float:
    """The p-th percentile (1..99), interpolated between the closest ranks."""
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


Window = list[tuple[str, float]]  # (sql, seconds) per statement: before to after its execution


def split(window: Window, kind: Callable[[str], str]) -> tuple[dict[str, float], dict[str, int]]:
    """ms and statements per kind of statement."""
    ms: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for sql, seconds in window:
        ms[kind(sql)] += seconds * 1000
        counts[kind(sql)] += 1
    return ms, counts


class StatementRecorder:
    """Times a sync engine's statements inside `window()` blocks (COMMIT: the caller's time)."""

    def __init__(self, engine: Engine) -> None:
        self._current: Window | None = None
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, *_: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, sql: str, *_: Any) -> None:
        started = conn.info.pop("bench_started", None)
        if self._current is not None and started is not None:
            self._current.append((sql, time.perf_counter() - started))

    @contextmanager
    def window(self) -> Iterator[Window]:
        self._current = []
        yield self._current
        self._current = None


@contextmanager
def child(
    args: Sequence[str], env: dict[str, str], **popen: Any
) -> Iterator[subprocess.Popen[Any]]:
    """`python ARGS` in the repository; SIGTERM (then SIGKILL) at the end, always reaped."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Child(NamedTuple):
    wall_seconds: float  # spawn to exit, interpreter start and imports included
    peak_mb: float  # VmHWM, the child's own (wait4's ru_maxrss also counts the parent's at fork)
    maxrss_mb: float  # wait4's ru_maxrss, for reference
    output: dict[str, Any]  # its last JSON line


PEAK = """\
import atexit, sys
def _peak():  # the child's own peak memory, on its stderr at exit
    lines = open("/proc/self/status").read().splitlines()
    sys.stderr.write(next(line for line in lines if line.startswith("VmHWM:")) + "\\n")
atexit.register(_peak)
"""


def run_to_end(code: str, *args: str, env: dict[str, str]) -> Child:
    """`python -c CODE ARGS` to its end, its peak memory written to stderr at exit."""
    with tempfile.TemporaryFile() as err:
        args = ("-c", PEAK + code, *args)
        with Timer() as wall, child(args, env, stdout=subprocess.PIPE, stderr=err) as proc:
            assert proc.stdout is not None
            with proc.stdout as pipe:
                out = pipe.read().decode()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        log = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"python {args[2:]} exited {proc.returncode}:\n{log[-4000:]}")
    peak_kb = int([line for line in log.splitlines() if line.startswith("VmHWM:")][-1].split()[1])
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return Child(wall.seconds, peak_kb / 1024, usage.ru_maxrss / 1024, lines[-1] if lines else {})


# The review's six drop_events indexes. Migration 0003 dropped them (no query of ours reads
# them); the original patterns read through them, so a benchmark creates them where an
# original runs (see docs/architecture.md, Review findings).
REVIEW_COLUMNS = ["bucket_id", "slot_id", "event_type", "opened_at", "event_type, opened_at DESC"]
REVIEW_COLUMNS += ["bucket_id, event_type, opened_at DESC"]


def engine_for(url: str, name: str = "bench", **settings: Any) -> Engine:
    """A sync engine on `url` without a statement timeout (bulk loads take a while)."""
    values: dict[str, Any] = {"db_statement_timeout_ms": 0, "db_pool_size": 8, **settings}
    return make_engine(Settings(**values), name=name, url=url)


def create_review_indexes(engine: Engine) -> float:
    """Create the review's indexes (for an original pattern); return the seconds it took."""
    with Timer() as timer, engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        for c in REVIEW_COLUMNS:  # ix_drop_events_<columns> ON drop_events (<columns>)
            name = f"ix_drop_events_{c.replace(', ', '_').removesuffix(' DESC')}"
            conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON drop_events ({c})"))
    return timer.seconds


def count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def vacuum(engine: Engine, what: str = "VACUUM (ANALYZE)") -> float:
    """Run VACUUM (outside a transaction); return the seconds it took."""
    with Timer() as timer, engine.connect() as conn:
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


def checkpoint(server: PgServer) -> None:
    """An untimed CHECKPOINT, so a measurement does not pay for earlier bulk writes' flushing."""
    with suppress(psycopg.errors.InsufficientPrivilege):
        server.execute("CHECKPOINT")


def postgres(server: PgServer, names: Sequence[str]) -> str:
    """E.g. "PostgreSQL 18.6, embedded ...; shared_buffers=128MB, jit=on"."""
    with psycopg.connect(libpq_url(server.admin_url)) as conn:
        show = {n: str(conn.execute(f"SHOW {n}".encode()).fetchall()[0][0]) for n in names}
        version = str(conn.execute(b"SHOW server_version").fetchall()[0][0]).split()[0]
    settings = ", ".join(f"{name}={value}" for name, value in show.items())
    return f"PostgreSQL {version}, {server.description}; {settings}"


def machine() -> str:
    def proc(path: str, key: str) -> str:  # the first `key:` line of a /proc file
        lines = Path(path).read_text().splitlines() if Path(path).exists() else []
        return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), "")

    memory = int(proc("/proc/meminfo", "MemTotal").split()[0] or 0) / 2**20
    return (
        f"{len(os.sched_getaffinity(0))} CPUs (nproc; {proc('/proc/cpuinfo', 'model name')}), "
        f"{memory:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


class Target(NamedTuple):
    name: str  # what must hold, e.g. "k=1000 under 150 ms"
    measured: str
    ok: bool | None  # None: not measured in this run


class Section:
    """One benchmark's Markdown section: its command, setting (bullets), targets and tables."""

    def __init__(self, title: str, command: str, **bullets: str) -> None:
        self.title, self.command, self.bullets = title, command, bullets
        self.lines: list[str] = []

    def add(self, *paragraphs: str) -> Section:
        self.lines += [line for paragraph in paragraphs for line in ("", paragraph)]
        return self

    def table(self, head: Sequence[str], body: Sequence[Sequence[str]], title: str = "") -> Section:
        """A Markdown table: the first column left-aligned, the figures right-aligned."""
        rows = [f"| {' | '.join(head)} |", "|---" + "|---:" * (len(head) - 1) + "|"]
        rows += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return self.add(*([title] if title else []), "\n".join(rows))

    def targets(self, targets: Sequence[Target]) -> Section:
        verdict = {None: "n/a", True: "PASS", False: "MISS"}
        body = [[name, measured, f"**{verdict[ok]}**"] for name, measured, ok in targets]
        self.table(["target", "measured", "verdict"], body)
        self.lines[-1] = self.lines[-1].replace("|---:|---:|", "|---|---|", 1)  # all left
        return self

    def __str__(self) -> str:
        bullets = [f"- {key.replace('_', ' ')}: {text}" for key, text in self.bullets.items()]
        return "\n".join([f"## {self.title}", "", f"`{self.command}`", "", *bullets, *self.lines])


class Point(NamedTuple):  # one figure at one table size, ours beside the original's (charts)
    metric: str
    unit: str  # "ms" or "s" (latency) or "MB" (memory)
    size: int  # drop_events in the table
    ours: float
    original: float | None = None


def _ints(value: str) -> list[int]:  # a list option: comma-separated integers, ascending
    return sorted(int(v) for v in value.split(",") if v.strip())


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds every `with`: children stopped, databases dropped


def main(
    name: str,
    doc: str | None,
    options: Sequence[tuple[str, Any, str, float, float]],
    measure: Callable[[PgServer, argparse.Namespace], Any],  # may be a coroutine function
    render: Callable[[Any, Section], list[Point]],
    show: Sequence[str] = ("shared_buffers", "work_mem", "synchronous_commit", "fsync", "jit"),
    check: Callable[[argparse.Namespace], str] = lambda _: "",
) -> int:
    """Options: (flag, default, help, lowest, highest); `render` returns the chart points."""
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=(doc or "").strip())
    p.add_argument("--markdown", action="store_true", help="(the default) print Markdown")
    p.add_argument("--json", help="also write the chart figures to this file")
    for flag, default, about, low, high in options:
        kind = _ints if isinstance(default, list) else type(default)
        p.add_argument(flag, type=kind, default=default, help=f"{about} ({low:g} to {high:g})")
    args = p.parse_args()
    for flag, _, _, low, high in options:
        value = getattr(args, flag[2:].replace("-", "_"))
        if not all(low <= v <= high for v in (value if isinstance(value, list) else [value])):
            p.error(f"{flag} must be {low:g} to {high:g}")
    if error := check(args):
        p.error(error)
    command = f".venv/bin/python -m bench.{name} {' '.join(sys.argv[1:])}".strip()
    signal.signal(signal.SIGTERM, _stop)  # the process ends after `main`: no need to restore
    with pg_server("dropwatch-bench-") as server:
        database = postgres(server, show)
        result = measure(server, args)
        result = asyncio.run(result) if inspect.iscoroutine(result) else result
    section = Section("", command, Machine=machine(), Database=database)
    points = render(result, section)
    print(section)
    if args.json:
        found = [p._asdict() for p in points if math.isfinite(p.ours + (p.original or 0.0))]
        Path(args.json).write_text(json.dumps({"benchmark": name, "points": found}, indent=1))
    return 0
