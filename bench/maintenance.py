"""Benchmark of the daily maintenance run against the review's original aggregation job.

    .venv/bin/python -m bench.maintenance [--events 1000000]
                                          [--prune-sizes 100000,1000000,5000000]
                                          [--day-events 36000] [--repeats 5]
                                          [--skip-run | --only-prune] [--markdown]

Not a test: it prints figures. Steps:

1. One PostgreSQL server (`DROPWATCH_DATABASE_URL`'s, or an embedded one in a temporary
   directory). A template database, migrated to head (drop_events: primary key and dedupe key
   only; migration 0003 dropped the review's six other indexes), gets about `--events`
   `drop_events` from the project's loader, `tools.seed` (`make_plan` + `load`: 14 past
   days and the settings' 14 live days relative to a fixed "now" of today 07:05 in the
   market's zone, anchors 15:00 and 19:00, 2000 venues, NEW_DROP/CLOSED pairs with durations,
   the live buckets' open state; each day built as its own table, indexed, ANALYZEd and
   attached), then VACUUM (a past day's partition has been visited by autovacuum before the
   daily run reaches it).
2. Ours: a copy of the template (`CREATE DATABASE ... TEMPLATE`, then a CHECKPOINT), and the
   real CronJob command `python -m services.maintenance run --now <that now>` in a child with
   `DROPWATCH_DATABASE_URL` pointing at the copy. Its JSON line gives every step's rows and
   seconds; the child's peak RSS is its own VmHWM, read from /proc/self/status when it exits.
3. Original: another copy of the same template, given the review's six drop_events indexes
   (`bench._db.create_review_indexes`, untimed; its row DELETE reads through them), then a
   CHECKPOINT, and in another child process the review's section 4/5 job:
   `session.query(DropEvent).all()`, per venue/day and market/day figures (counts, average and
   median durations, drops by hour) computed in Python, venue, market and rolling metric rows
   written through the ORM, then `DELETE FROM discovery_buckets` and
   `DELETE FROM drop_events WHERE bucket_id < cutoff`. Same wall-clock and peak RSS figures.
   Both copies' metric tables are compared afterwards (the two jobs must agree).
4. Prune scaling, the day grows with the table: for each `--prune-sizes` value a fresh
   database with that many events over the 28 days, its past days aggregated, then a CHECKPOINT
   (all untimed). The sizes then take turns, one day each per round: first our way, the real
   `prune_events` step for one day (lock, count, compare with the committed figures, DROP
   partition, commit), on the oldest past days, on the real schema; then every size gets the
   review's six indexes and a CHECKPOINT (untimed), and the review's row DELETE (`DELETE FROM
   drop_events WHERE bucket_id < <the day after>`) runs on the next days. Each method's first
   day is an untimed warm-up, then `--repeats` timed days. The events are spread over 28 days,
   so the pruned day grows with the table (1/28 of it): this shows how the prune scales with
   the size of the day.
5. Prune scaling, fixed-size day (skipped with `--day-events 0`): the same measurement, but
   every pruned day holds `--day-events` events (default 36,000, one day at 1M events) while
   the rest of the table (`--prune-sizes` value minus one day) sits in the other days (the 2
   remaining past and 14 live days). The 2 x (1 + `--repeats`) pruned days cannot all be in a
   100k table at once, so each starts as an empty partition and is filled just before its
   round (untimed,
   all sizes: `tools.seed.load` of that day, VACUUM (ANALYZE) of its partition, its
   aggregation), then one CHECKPOINT; so at each prune the table holds about the
   `--prune-sizes` value, of which the pruned day is `--day-events`. This is the issue's
   "pruning a day's worth of events costs the same at 100k and at 5M rows".

`--skip-run` (or `--only-prune`) leaves out steps 1-3 (no --events database, no child jobs).

Child processes are killed and every database is dropped (the embedded server stopped) at the
end, also on errors and SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from sqlalchemy import Engine, event, select, text
from sqlalchemy.orm import Session

from bench._db import (
    EXTERNAL_URL_ENV,
    BenchServer,
    ServerInfo,
    StatementRecorder,
    admin_execute,
    bench_database,
    bench_server,
    bench_settings,
    cpu_count,
    cpu_model,
    create_review_indexes,
    median,
    memory_gib,
    migrate_to_head,
    server_info,
    timed,
    with_database,
)
from bench.points import Point, write_points
from bench.tables import md_table, plain_table
from services.maintenance import run as maintenance_run
from services.maintenance import sql as maintenance_sql
from services.maintenance.settings import MaintenanceSettings
from shared.db.buckets import bucket_id_for, market_today
from shared.db.engine import make_engine
from shared.db.models import (
    EVENT_CLOSED,
    EVENT_NEW_DROP,
    DropEvent,
    MarketMetrics,
    VenueMetrics,
    VenueRollingMetrics,
)
from shared.db.partitions import list_partitions, partition_name
from tools.seed import SeedPlan, load, make_plan
from tools.seed.loader import LOADERS

REPO = Path(__file__).resolve().parents[1]
NOW_TIME = dt.time(7, 5)
PAST_DAYS = 14  # past days of history (the seed's default); the live days are the settings'
MIN_EVENTS = 10_000

TARGET_PEAK_MB = 150.0
TARGET_PEAK_RATIO = 10.0
TARGET_AGG_PRUNE_SECONDS = 5.0
TARGET_PRUNE_RATIO = 1.5
DAY_EVENTS = 36_000  # one day's events at 1M events over 28 days (14 past, 14 live)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def filesystem(path: Path) -> str:
    """The file system `path` lives on, e.g. "ext4 (discard)" (Linux; "" elsewhere)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    best = ("", "", "")
    resolved = str(path.resolve())
    for line in mounts:
        _, mount, fstype, options, *_ = line.split()
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):
            best = (mount, fstype, options)
    if not best[1]:
        return ""
    discard = ", discard" if "discard" in best[2].split(",") else ""
    return f"{best[1]} at {best[0]}{discard}"


def fixed_now() -> dt.datetime:
    """Today 07:05 in the market's zone: after midnight, before the 15:00 cutoff."""
    zone = bench_settings().zone
    return dt.datetime.combine(dt.datetime.now(zone).date(), NOW_TIME, tzinfo=zone)


def seed_plan(events: int, now: dt.datetime) -> SeedPlan:
    """The seed's plan of about `events` events (14 past days, the settings' live days)."""
    return make_plan(bench_settings(), events, now=now, past_days=PAST_DAYS)


def data_shape(plan: SeedPlan) -> str:
    """E.g. "14 past and 14 live days, anchors 15:00 and 19:00, 2000 venues"."""
    past = sum(1 for d in plan.days if d < plan.today)
    anchors = " and ".join(sorted({b.anchor for b in plan.buckets}))
    return (
        f"{past} past and {len(plan.days) - past} live days, anchors {anchors}, "
        f"{plan.venues} venues"
    )


# --- child processes ----------------------------------------------------------------------------

# Run with `python -c`. The peak RSS is this process's own VmHWM (high-water mark of its
# address space since exec), written to argv[1] at exit. RUSAGE_CHILDREN's ru_maxrss is not
# used as the figure: Linux folds the parent's RSS at fork/exec time into it.
_CHILD = """\
import atexit, json, sys

def _report_peak(path=sys.argv[1]):
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0])
    with open(path, "w") as out:
        json.dump(fields, out)

atexit.register(_report_peak)
kind = sys.argv[2]
if kind == "ours":
    from services.maintenance.__main__ import main
    sys.exit(main(["run", "--now", sys.argv[3]]))
elif kind == "original":
    from bench.maintenance import original_job
    original_job(sys.argv[3])
elif kind == "ours-imports":
    import services.maintenance.__main__
elif kind == "original-imports":
    import bench.maintenance
"""

_LIVE_CHILDREN: set[subprocess.Popen[bytes]] = set()


@dataclass
class ChildResult:
    kind: str
    wall_seconds: float
    peak_kb: int  # VmHWM of the child itself
    maxrss_kb: int  # wait4's ru_maxrss, for reference (includes the parent's RSS at fork)
    output: dict[str, Any]

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024.0


def run_child(kind: str, now: dt.datetime, url: str | None = None) -> ChildResult:
    """Run one child to the end; its environment has no DROPWATCH_* but the database URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWATCH_")}
    if url is not None:
        env["DROPWATCH_DATABASE_URL"] = url
    with tempfile.TemporaryDirectory(prefix="dw-bench-child-") as scratch:
        peak_path = Path(scratch) / "peak.json"
        err_path = Path(scratch) / "stderr"
        with err_path.open("wb") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(peak_path), kind, now.isoformat()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=REPO,
            )
            _LIVE_CHILDREN.add(proc)
            try:
                assert proc.stdout is not None
                out = proc.stdout.read()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
            finally:
                _kill(proc)
            wall = time.perf_counter() - started
        stderr = err_path.read_text(errors="replace")
        if proc.returncode != 0:
            raise SystemExit(f"child {kind} exited {proc.returncode}:\n{stderr[-4000:]}")
        peak = json.loads(peak_path.read_text())
    output: dict[str, Any] = {}
    for line in out.decode().splitlines():
        if line.startswith("{"):
            output = json.loads(line)
    return ChildResult(kind, wall, int(peak["VmHWM"]), int(usage.ru_maxrss), output)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    _LIVE_CHILDREN.discard(proc)


def kill_children() -> None:
    for proc in list(_LIVE_CHILDREN):
        _kill(proc)


# --- the original job (runs in a child) ----------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def original_job(now_iso: str) -> None:
    """The review's aggregate_before_prune + prune jobs: everything through the ORM and Python.

    Prints one JSON line with the seconds of each part.
    """
    settings = MaintenanceSettings()
    if settings.database_url is None:
        raise SystemExit("DROPWATCH_DATABASE_URL is not set")
    now = dt.datetime.fromisoformat(now_iso)
    today = market_today(settings.zone, now)
    cutoff = bucket_id_for(today, settings.cutoff_time)
    zone = settings.zone
    engine = make_engine(settings, name="original", url=settings.database_url.get_secret_value())
    parts: dict[str, float] = {}
    try:
        with Session(engine) as session:
            started = time.perf_counter()
            events = session.query(DropEvent).all()  # the review's section 4: the whole table
            parts["load"] = time.perf_counter() - started

            started = time.perf_counter()
            # (venue, day) -> new, closed, prime, off_peak, durations
            venues: dict[tuple[int, dt.date], list[Any]] = defaultdict(lambda: [0, 0, 0, 0, []])
            # day -> new, closed, venues with drops, durations, drops by hour
            markets: dict[dt.date, list[Any]] = defaultdict(lambda: [0, 0, set(), [], Counter()])
            aggregated = 0
            for e in events:
                if e.bucket_id >= cutoff:
                    continue
                aggregated += 1
                v = venues[(e.venue_id, e.bucket_date)]
                m = markets[e.bucket_date]
                if e.event_type == EVENT_NEW_DROP:
                    v[0] += 1
                    v[2 if e.time_bucket == "prime" else 3] += 1
                    m[0] += 1
                    m[2].add(e.venue_id)
                    m[4][e.opened_at.astimezone(zone).hour] += 1
                elif e.event_type == EVENT_CLOSED:
                    v[1] += 1
                    m[1] += 1
                    if e.drop_duration_seconds is not None:
                        v[4].append(e.drop_duration_seconds)
                        m[3].append(e.drop_duration_seconds)
            venue_rows = [
                VenueMetrics(
                    venue_id=venue_id,
                    window_date=day,
                    new_drop_count=v[0],
                    closed_count=v[1],
                    prime_drop_count=v[2],
                    off_peak_drop_count=v[3],
                    avg_drop_duration_seconds=_mean(v[4]),
                    median_drop_duration_seconds=_median(v[4]),
                    scarcity_score=1.0 / (1 + v[0]),
                )
                for (venue_id, day), v in venues.items()
            ]
            market_rows = [
                MarketMetrics(
                    market=settings.market,
                    window_date=day,
                    total_drops=m[0],
                    total_closes=m[1],
                    venues_with_drops=len(m[2]),
                    avg_drop_duration_seconds=_mean(m[3]),
                    median_drop_duration_seconds=_median(m[3]),
                    weekday=day.isoweekday(),
                    drops_by_hour={str(h): n for h, n in sorted(m[4].items())},
                )
                for day, m in markets.items()
            ]
            parts["aggregate"] = time.perf_counter() - started

            started = time.perf_counter()
            session.add_all(venue_rows)
            session.add_all(market_rows)
            session.flush()
            # Rolling figures from the venue rows of the window (the review: "fine").
            since = today - dt.timedelta(days=settings.rolling_days)
            window = session.scalars(
                select(VenueMetrics).where(
                    VenueMetrics.window_date >= since, VenueMetrics.window_date < today
                )
            ).all()
            per_venue: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
            for row in window:
                r = per_venue[row.venue_id]
                r[0] += row.new_drop_count
                r[1] += 1 if row.new_drop_count > 0 else 0
                if row.window_date >= today - dt.timedelta(days=7):
                    r[2] += row.new_drop_count
                elif row.window_date >= today - dt.timedelta(days=14):
                    r[3] += row.new_drop_count
            days = settings.rolling_days
            session.add_all(
                VenueRollingMetrics(
                    venue_id=venue_id,
                    as_of_date=today,
                    total_drops=r[0],
                    days_with_drops=r[1],
                    drops_per_day=r[0] / days,
                    rarity_score=1.0 / (1 + r[0] / days),
                    last7_drops=r[2],
                    prev7_drops=r[3],
                    trend=r[2] / r[3] if r[3] > 0 else None,
                    availability_rate=r[1] / days,
                )
                for venue_id, r in per_venue.items()
            )
            session.commit()
            parts["write"] = time.perf_counter() - started

            started = time.perf_counter()
            buckets = session.execute(
                text("DELETE FROM discovery_buckets WHERE bucket_id < :cutoff"),
                {"cutoff": cutoff},
            )
            deleted = session.execute(
                text("DELETE FROM drop_events WHERE bucket_id < :cutoff"), {"cutoff": cutoff}
            )
            session.commit()
            parts["prune"] = time.perf_counter() - started
            result = {
                "ok": True,
                "parts": {k: round(v, 4) for k, v in parts.items()},
                "loaded": len(events),
                "aggregated": aggregated,
                "venue_rows": len(venue_rows),
                "market_rows": len(market_rows),
                "rolling_rows": len(per_venue),
                "deleted_buckets": int(getattr(buckets, "rowcount", 0)),
                "deleted_events": int(getattr(deleted, "rowcount", 0)),
            }
    finally:
        engine.dispose()
    print(json.dumps(result), flush=True)


# --- databases ---------------------------------------------------------------------------------


@contextmanager
def cloned_database(server: BenchServer, template: str, prefix: str) -> Iterator[str]:
    """A copy of database `template` (which must have no connections); yields its libpq URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_execute(server.admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield with_database(server.admin_url, name)
    finally:
        admin_execute(server.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def checkpoint(server: BenchServer) -> bool:
    """CHECKPOINT (untimed), so a measurement does not pay for earlier bulk writes' flushing.

    False when the role may not (it needs superuser or pg_checkpoint)."""
    try:
        admin_execute(server.admin_url, "CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


@dataclass(frozen=True)
class Figures:
    """What a job left behind, to check that both jobs computed the same figures."""

    venue_rows: int
    new_drops: int
    closed: int
    median_sum: float
    avg_sum: float
    market_rows: int
    market_drops: int
    rolling_rows: int
    rolling_drops: int
    events_left: int
    buckets_left: int
    partitions_left: int

    def agrees_with(self, other: Figures) -> bool:
        exact = (
            "venue_rows",
            "new_drops",
            "closed",
            "market_rows",
            "market_drops",
            "rolling_rows",
            "rolling_drops",
            "events_left",
            "buckets_left",
        )
        if any(getattr(self, n) != getattr(other, n) for n in exact):
            return False
        return all(
            abs(getattr(self, n) - getattr(other, n)) <= 1e-6 * max(1.0, abs(getattr(self, n)))
            for n in ("median_sum", "avg_sum")
        )


def figures(url: str) -> Figures:
    engine = make_engine(bench_settings(db_statement_timeout_ms=0), name="bench-check", url=url)
    try:
        with engine.connect() as conn:
            v = conn.execute(
                text(
                    "SELECT count(*), coalesce(sum(new_drop_count), 0),"
                    " coalesce(sum(closed_count), 0),"
                    " coalesce(sum(median_drop_duration_seconds), 0),"
                    " coalesce(sum(avg_drop_duration_seconds), 0) FROM venue_metrics"
                )
            ).one()
            m = conn.execute(
                text("SELECT count(*), coalesce(sum(total_drops), 0) FROM market_metrics")
            ).one()
            r = conn.execute(
                text("SELECT count(*), coalesce(sum(total_drops), 0) FROM venue_rolling_metrics")
            ).one()
            events = conn.execute(text("SELECT count(*) FROM drop_events")).scalar_one()
            buckets = conn.execute(text("SELECT count(*) FROM discovery_buckets")).scalar_one()
            partitions = len(list_partitions(conn))
    finally:
        engine.dispose()
    return Figures(
        venue_rows=int(v[0]),
        new_drops=int(v[1]),
        closed=int(v[2]),
        median_sum=float(v[3]),
        avg_sum=float(v[4]),
        market_rows=int(m[0]),
        market_drops=int(m[1]),
        rolling_rows=int(r[0]),
        rolling_drops=int(r[1]),
        events_left=int(events),
        buckets_left=int(buckets),
        partitions_left=partitions,
    )


# --- the measurements ----------------------------------------------------------------------------


@dataclass
class DataInfo:
    events: int
    new_drops: int
    closed: int
    past_events: int
    past_days: int
    partitions: int
    open_slots: int
    load_seconds: float  # tools.seed.load: every day built, indexed, ANALYZEd, attached
    vacuum_seconds: float
    workers: int  # days loaded at a time
    id_base: int  # the load's event id base: a later load of more days reuses it
    shape: str  # data_shape() of the plan

    @property
    def events_per_second(self) -> float:
        return self.events / self.load_seconds if self.load_seconds else 0.0


@dataclass
class RunPart:
    data: DataInfo
    ours: ChildResult
    original: ChildResult
    ours_imports: ChildResult
    original_imports: ChildResult
    ours_figures: Figures
    original_figures: Figures
    original_index_seconds: float  # the review's indexes on the original's copy (untimed)


def load_data(
    engine: Engine, events: int, now: dt.datetime, plan: SeedPlan | None = None
) -> DataInfo:
    """Load `plan` (default: `seed_plan(events, now)`) with `tools.seed`, then VACUUM the
    whole database."""
    plan = plan if plan is not None else seed_plan(events, now)
    loaded = load(engine, plan)
    # Past days' partitions have not been written to for a day: autovacuum (insert-triggered)
    # has visited them, so their hint bits and visibility maps are set. Do the same here.
    with timed() as vacuum, engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM"))
    with engine.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                text("SELECT event_type, count(*) FROM drop_events GROUP BY event_type")
            ).all()
        )
        past = conn.execute(
            text("SELECT count(*) FROM drop_events WHERE bucket_date < :today"),
            {"today": plan.today},
        ).scalar_one()
        open_slots = conn.execute(text("SELECT count(*) FROM open_slots")).scalar_one()
        partitions = len(list_partitions(conn))
    new_drops = int(counts.get(EVENT_NEW_DROP, 0))
    closed = int(counts.get(EVENT_CLOSED, 0))
    if (new_drops + closed, open_slots) != (loaded.events, loaded.open_drops + loaded.baseline):
        raise SystemExit(
            f"seeded {new_drops + closed} events and {open_slots} open_slots, planned "
            f"{loaded.events} and {loaded.open_drops + loaded.baseline}"
        )
    return DataInfo(
        events=loaded.events,
        new_drops=new_drops,
        closed=closed,
        past_events=int(past),
        past_days=sum(1 for d in plan.days if d < plan.today),
        partitions=partitions,
        open_slots=int(open_slots),
        load_seconds=loaded.seconds,
        vacuum_seconds=vacuum.seconds,
        workers=LOADERS,
        id_base=loaded.id_base,
        shape=data_shape(plan),
    )


def measure_run(server: BenchServer, events: int, now: dt.datetime) -> tuple[RunPart, ServerInfo]:
    with bench_database("dw_bench_maint", server) as template:
        log(f"database {template.name} on {template.server}; migrating")
        migrate_to_head(template.url)
        engine = make_engine(
            bench_settings(db_statement_timeout_ms=0, db_pool_size=8),
            name="bench-load",
            url=template.url,
        )
        try:
            info = server_info(engine)
            log(f"loading ~{events:,} drop_events (now = {now.isoformat()})")
            data = load_data(engine, events, now)
            log(
                f"loaded {data.events:,} drop_events in {data.load_seconds:.1f} s "
                f"({data.events_per_second:,.0f} events/s)"
            )
        finally:
            engine.dispose()  # a template must have no connections

        log("child baselines (interpreter + imports only)")
        ours_imports = run_child("ours-imports", now)
        original_imports = run_child("original-imports", now)

        with cloned_database(server, template.name, "dw_bench_ours") as url:
            checkpoint(server)
            log("ours: python -m services.maintenance run --now ...")
            ours = run_child("ours", now, url)
            if not ours.output.get("ran"):
                raise SystemExit(f"the maintenance run did not run: {ours.output}")
            ours_figures = figures(url)
        log(f"ours: {ours.wall_seconds:.1f} s, peak {ours.peak_mb:.0f} MB")

        with cloned_database(server, template.name, "dw_bench_orig") as url:
            # The original reads through the review's indexes: on its own copy only, so ours
            # ran on the real schema.
            index_seconds = review_indexes(url)
            log(f"original's copy: the review's indexes created in {index_seconds:.1f} s")
            checkpoint(server)
            log("original: query(DropEvent).all(), Python aggregation, row DELETE")
            original = run_child("original", now, url)
            original_figures = figures(url)
        log(f"original: {original.wall_seconds:.1f} s, peak {original.peak_mb:.0f} MB")
    part = RunPart(
        data,
        ours,
        original,
        ours_imports,
        original_imports,
        ours_figures,
        original_figures,
        index_seconds,
    )
    return part, info


def review_indexes(url: str) -> float:
    """Create the review's drop_events indexes on database `url`; return seconds."""
    engine = make_engine(bench_settings(db_statement_timeout_ms=0), name="bench-index", url=url)
    try:
        return create_review_indexes(engine)
    finally:
        engine.dispose()


PRUNE_PARTS = ("count", "drop", "checks", "commit", "rest")
PRUNE_PARTS_NOTE = (
    "Median ms per part of our one-day prune (each statement from before to after its cursor "
    "execution, round trip included): count(*) = the day's event count; DROP TABLE = the "
    "partition's DDL; other statements = partition list (twice), LOCK ... IN SHARE MODE, the "
    "DDL advisory lock and the venue_metrics sum it is compared with; COMMIT = from the "
    "commit call to the step's return (WAL flush; the dropped partition's files are truncated "
    "and unlinked at commit); rest = pool checkout with pre-ping, and Python."
)


def fixed_day_plan(
    size: int, day_events: int, days: int, now: dt.datetime
) -> tuple[SeedPlan, SeedPlan]:
    """A plan of about `size` events whose `days` oldest past days hold `day_events` each.

    Returns the plan to load first, in which those days are empty (their partitions exist), and
    the plan to fill them from later, one day at a time (`PruneTarget.refill`: `load` of that
    day with the first load's id base): at any moment the table then holds the rest
    (`size - day_events`, spread evenly over the other days' buckets, live open drops as in
    `seed_plan(size, now)`) plus the one filled day.
    """
    base = seed_plan(size, now)
    fixed = set(base.days[:days])
    if any(day >= base.today for day in fixed):
        raise SystemExit(f"{days} fixed-size days do not fit in {PAST_DAYS} past days")
    others = [b for b in base.buckets if b.day not in fixed]
    open_drops = sum(b.open_drops for b in others)
    # events of a bucket = 2 * pairs - open drops (an open drop has no CLOSED)
    rest_pairs = max(
        max(b.open_drops for b in others),
        math.ceil((size - day_events + open_drops) / (2 * len(others))),
    )
    anchors = len({b.anchor for b in base.buckets})
    day_pairs = math.ceil(day_events / (2 * anchors))  # past buckets: no open drops
    final = []
    n0 = 0
    for b in base.buckets:
        pairs = day_pairs if b.day in fixed else rest_pairs
        final.append(replace(b, n0=n0, pairs=pairs))
        n0 += pairs  # pair numbers (event ids) stay unique across later fills
    first = tuple(replace(b, pairs=0) if b.day in fixed else b for b in final)
    return replace(base, buckets=first), replace(base, buckets=tuple(final))


@dataclass
class PruneRow:
    size: int
    events: int  # loaded; for a fixed-size day, what the table holds at each prune
    load_seconds: float
    fixed_day: int = 0  # --day-events of a fixed-size-day row, 0 for "day grows with the table"
    day_events: list[int] = field(default_factory=list)  # events of each day pruned our way
    day_bytes: list[int] = field(default_factory=list)  # its partition's size on disk
    ours_ms: list[float] = field(default_factory=list)
    # Our prune, part by part: statement -> ms per repeat (see PRUNE_PARTS).
    parts: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PRUNE_PARTS})
    delete_events: list[int] = field(default_factory=list)
    delete_ms: list[float] = field(default_factory=list)
    checkpointed: bool = False  # a CHECKPOINT ran after the load (fixed day: every fill)
    index_seconds: float = 0.0  # the review's indexes, created between ours and the DELETEs

    @property
    def ours(self) -> float:
        return median(self.ours_ms)

    def part(self, name: str) -> float:
        return median(self.parts[name])

    @property
    def delete(self) -> float:
        return median(self.delete_ms)


def _prune_part(sql: str) -> str:
    if sql.startswith("SELECT count(*) FROM drop_events_p"):
        return "count"
    if sql.startswith("DROP TABLE"):
        return "drop"
    return "checks"  # partition list, LOCK, advisory lock, the venue_metrics sum


class PruneTarget:
    """One prune-scaling database: loaded, past days aggregated, ready to prune."""

    def __init__(
        self, url: str, size: int, now: dt.datetime, *, day_events: int = 0, fixed_days: int = 0
    ) -> None:
        """`day_events` > 0: the `fixed_days` oldest past days start empty and are filled with
        `day_events` events each by `refill`, just before they are pruned."""
        self.settings = MaintenanceSettings()
        self.engine = make_engine(
            bench_settings(db_statement_timeout_ms=0, db_pool_size=8),
            name="bench-prune",
            url=url,
        )
        self.info = server_info(self.engine)
        self.now = now
        self.refill_plan: SeedPlan | None = None  # the fixed-size days' events, to fill later
        self.fixed: set[dt.date] = set()  # those days
        plan = None
        self.label = f"{size:,}"
        if day_events:
            plan, self.refill_plan = fixed_day_plan(size, day_events, fixed_days, now)
            self.fixed = set(plan.days[:fixed_days])
            self.label += f" (fixed day of {day_events:,})"
        log(f"prune {self.label}: loading")
        data = load_data(self.engine, size, now, plan)
        log(f"prune {self.label}: loaded {data.events:,} in {data.load_seconds:.1f} s")
        self.id_base = data.id_base
        self.resident = data.events  # in the table besides a filled day
        self.row = PruneRow(
            size=size, events=data.events, load_seconds=data.load_seconds, fixed_day=day_events
        )
        today = market_today(self.settings.zone, now)
        with self.engine.connect() as conn:
            self.past = [d for d in list_partitions(conn) if d < today]
        for day in self.past:  # what the aggregate step does before any prune (untimed)
            if day in self.fixed:
                continue  # aggregated when filled
            with self.engine.begin() as conn:
                maintenance_sql.aggregate_day(
                    conn, day, market=self.settings.market, zone=self.settings.market_timezone
                )
        self.recorder = StatementRecorder(self.engine)
        self.commits: list[float] = []
        event.listen(self.engine, "commit", lambda conn: self.commits.append(time.perf_counter()))

    def refill(self, day: dt.date) -> None:
        """Fill the empty past day `day` with its events (untimed): `tools.seed.load` of that
        day (its partition rebuilt with the parent's indexes of the moment), VACUUM (ANALYZE)
        of its partition (as after the load), its aggregation."""
        assert self.refill_plan is not None and day in self.fixed
        inserted = load(self.engine, self.refill_plan, days=[day], id_base=self.id_base).events
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text(f"VACUUM (ANALYZE) {partition_name(day)}")
            )
        with self.engine.begin() as conn:
            counted = maintenance_sql.aggregate_day(
                conn, day, market=self.settings.market, zone=self.settings.market_timezone
            )
        if counted != inserted:
            raise SystemExit(f"fill of {day}: {inserted} events inserted, {counted} counted")
        # Every earlier filled day is gone (dropped or its rows deleted) by now.
        self.row.events = self.resident + inserted

    def prune_ours(self, day: dt.date, *, keep: bool) -> None:
        """The real prune_events step for `day` alone, timed part by part."""
        row = self.row
        with self.engine.connect() as conn:
            on_disk = conn.execute(
                text("SELECT pg_total_relation_size(CAST(:p AS regclass))"),
                {"p": partition_name(day)},
            ).scalar_one()
        with self.recorder.window() as window, timed() as watch:
            step = maintenance_run._prune_events(self.settings, self.engine, [day])
        if step.detail != {"partitions": 1, "reaggregated": 0}:
            raise SystemExit(f"prune of {day} did not go as planned: {step}")
        if not keep:
            return
        row.ours_ms.append(watch.ms)
        row.day_events.append(step.rows)
        row.day_bytes.append(int(on_disk))
        spent = {p: 0.0 for p in PRUNE_PARTS}
        for statement in window.statements:
            spent[_prune_part(statement.sql)] += statement.seconds * 1000.0
        assert watch.stopped is not None
        spent["commit"] = (watch.stopped - self.commits[-1]) * 1000.0
        spent["rest"] = watch.ms - sum(spent.values())
        for name, ms in spent.items():
            row.parts[name].append(ms)

    def delete_rows(self, day: dt.date, *, keep: bool) -> None:
        """The review's row DELETE; every earlier day is gone, so it removes `day` alone."""
        cutoff = bucket_id_for(day + dt.timedelta(days=1), "00:00")
        with timed() as watch, self.engine.begin() as conn:
            result = conn.execute(
                text("DELETE FROM drop_events WHERE bucket_id < :cutoff"), {"cutoff": cutoff}
            )
        if self.fixed and result.rowcount != self.row.events - self.resident:
            raise SystemExit(f"row DELETE of the filled {day} removed {result.rowcount} events")
        if keep:
            self.row.delete_ms.append(watch.ms)
            self.row.delete_events.append(int(result.rowcount))

    def add_review_indexes(self) -> None:
        """The review's drop_events indexes, which its row DELETE reads through (untimed)."""
        self.row.index_seconds = create_review_indexes(self.engine)
        log(f"prune {self.label}: the review's indexes created in {self.row.index_seconds:.1f} s")


def measure_prune(
    server: BenchServer,
    sizes: Sequence[int],
    now: dt.datetime,
    repeats: int,
    day_events: int = 0,
) -> tuple[list[PruneRow], ServerInfo]:
    """Load one database per size, then prune the sizes in turn (shared noise conditions).

    `day_events` > 0: every pruned day holds that many events, filled just before its round.
    """
    fixed_days = 2 * (1 + repeats)
    with ExitStack() as stack:
        targets = []
        for size in sizes:
            db = stack.enter_context(bench_database("dw_bench_prune", server))
            migrate_to_head(db.url)
            target = PruneTarget(db.url, size, now, day_events=day_events, fixed_days=fixed_days)
            stack.callback(target.engine.dispose)
            targets.append(target)
        checkpointed = True
        if not day_events:
            # Flush the loads and aggregations, so no prune competes with that write-back.
            checkpointed = checkpoint(server)

        def fill(day_index: int) -> None:
            """Fixed-size day: fill the day of every size, then flush it all (untimed)."""
            nonlocal checkpointed
            if day_events:
                for target in targets:
                    target.refill(target.past[day_index])
                checkpointed = checkpoint(server) and checkpointed

        # Ours on past days 0..repeats, then row DELETEs on the next days. Day 0 of each
        # method is an untimed warm-up (the first DDL or DELETE of a session loads catalogs).
        # Rounds alternate the order of the sizes, so none is always first after a change.
        for i in range(1 + repeats):
            fill(i)
            for target in targets if i % 2 == 0 else targets[::-1]:
                target.prune_ours(target.past[i], keep=i > 0)
        # Ours ran on the real schema; the row DELETE runs with the review's indexes. A day
        # filled from now on is built with them too (the seed copies the parent's indexes).
        for target in targets:
            target.add_review_indexes()
        if not day_events:
            checkpointed = checkpoint(server) and checkpointed  # fill() flushes otherwise
        for i in range(1 + repeats):
            fill(1 + repeats + i)
            for target in targets if i % 2 == 0 else targets[::-1]:
                target.delete_rows(target.past[1 + repeats + i], keep=i > 0)
        for target in targets:
            r = target.row
            r.checkpointed = checkpointed
            log(f"prune {target.label}: ours {r.ours:.1f} ms, row DELETE {r.delete:.1f} ms")
        return [target.row for target in targets], targets[0].info


# --- the report ----------------------------------------------------------------------------------


@dataclass
class Report:
    command: str
    server: ServerInfo
    server_description: str
    now: dt.datetime
    run: RunPart | None  # None with --skip-run
    prune: list[PruneRow]  # the day grows with the table
    repeats: int
    seconds: float
    data_fs: str  # the embedded server's file system, if it is one
    prune_fixed: list[PruneRow] = field(default_factory=list)  # fixed-size day
    day_events: int = 0
    shape: str = ""  # data_shape() of the seed's plans
    past_days: int = PAST_DAYS
    live_days: int = 14

    @property
    def days(self) -> int:
        return self.past_days + self.live_days

    @property
    def the_run(self) -> RunPart:
        assert self.run is not None, "--skip-run: no run part"
        return self.run

    def machine(self) -> str:
        mem = memory_gib()
        memory = f", {mem:.0f} GiB RAM" if mem is not None else ""
        return (
            f"{cpu_count()} CPUs (nproc; {cpu_model()}){memory}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}"
        )

    def postgres(self) -> str:
        s = self.server.settings
        where = self.server_description
        if self.data_fs:
            where += f" ({self.data_fs})"
        return (
            f"PostgreSQL {self.server.version}, {where}; shared_buffers="
            f"{s['shared_buffers']}, work_mem={s['work_mem']}, "
            f"synchronous_commit={s['synchronous_commit']}, fsync={s['fsync']}, jit={s['jit']}"
        )

    def data(self) -> str:
        if self.run is None:
            return (
                f"prune databases only (--skip-run): {self.shape}, one daily partition each, "
                f"loaded by tools.seed ({LOADERS} days at a time), then VACUUM (as autovacuum "
                "would have visited the past days' partitions); the schema at head (drop_events: "
                "primary key and dedupe key; the review's six other indexes only where its row "
                f'DELETE runs). "now" = {self.now.isoformat()}'
            )
        d = self.run.data
        return (
            f"{d.events:,} drop_events ({d.new_drops:,} NEW_DROP, {d.closed:,} CLOSED) in "
            f"{d.partitions} daily partitions ({d.shape}; the {d.past_days} past days hold "
            f"{d.past_events:,} events), {d.open_slots:,} open_slots; loaded by tools.seed "
            "(per day: its own table filled by one INSERT ... SELECT, its indexes built in bulk, "
            f"ANALYZE, ATTACH; {d.workers} days at a time) in {d.load_seconds:.1f} s = "
            f"{d.events_per_second:,.0f} events/s, then VACUUM ({d.vacuum_seconds:.1f} s; as "
            "autovacuum would have visited the past days' partitions). Schema at head: "
            "drop_events has its primary key and dedupe key only. "
            f'"now" = {self.now.isoformat()} (today {self.the_run.ours.output.get("today")}, '
            f"cutoff {self.the_run.ours.output.get('cutoff')})"
        )

    def method(self) -> str:
        return (
            "Both jobs run on copies (CREATE DATABASE ... TEMPLATE, then an untimed CHECKPOINT) "
            "of the same loaded database, each in its own child process. Ours = the CronJob "
            "command `python -m services.maintenance run --now <now>` (one JSON line with "
            "per-step seconds), on the real schema. "
            "Original = the review's job: `session.query(DropEvent).all()`, per venue/day and "
            "market/day figures in Python, VenueMetrics/MarketMetrics/VenueRollingMetrics rows "
            "through the ORM, then `DELETE FROM discovery_buckets` and `DELETE FROM drop_events "
            "WHERE bucket_id < cutoff`, on a copy given the review's six drop_events indexes "
            f"first (untimed, {self.the_run.original_index_seconds:.1f} s; migration 0003 "
            "dropped them, its DELETE reads through them). Peak RSS = the child's VmHWM "
            "(/proc/self/status at exit); wall = spawn to exit, incl. interpreter start and "
            "imports."
        )

    # -- numbers

    def ours_steps(self) -> dict[str, dict[str, Any]]:
        steps: dict[str, dict[str, Any]] = self.the_run.ours.output.get("steps", {})
        return steps

    def agg_prune_seconds(self) -> float:
        s = self.ours_steps()
        return sum(float(s[n]["seconds"]) for n in ("aggregate", "prune_buckets", "prune_events"))

    def peak_ratio(self) -> float:
        return self.the_run.original.peak_kb / self.the_run.ours.peak_kb

    @staticmethod
    def prune_ratio(rows: list[PruneRow]) -> tuple[PruneRow, PruneRow, float, float]:
        small = min(rows, key=lambda r: r.size)
        big = max(rows, key=lambda r: r.size)
        return small, big, big.ours / small.ours, big.delete / small.delete

    # -- tables

    def steps_table(self) -> tuple[list[str], list[list[str]]]:
        head = ["step (ours)", "rows", "seconds", "detail"]
        body = []
        for name, s in self.ours_steps().items():
            detail = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("rows", "seconds"))
            body.append([name, f"{s['rows']:,}", f"{s['seconds']:.3f}", detail or "-"])
        steps_total = sum(float(s["seconds"]) for s in self.ours_steps().values())
        body.append(["all steps", "", f"{steps_total:.3f}", ""])
        return head, body

    def original_table(self) -> tuple[list[str], list[list[str]]]:
        out = self.the_run.original.output
        what = {
            "load": f"query(DropEvent).all(): {out['loaded']:,} ORM objects",
            "aggregate": f"Python loop over them; {out['aggregated']:,} past events counted",
            "write": (
                f"ORM add_all + commit: {out['venue_rows']:,} venue, {out['market_rows']} "
                f"market, {out['rolling_rows']:,} rolling rows"
            ),
            "prune": (
                f"row DELETEs: {out['deleted_buckets']} buckets, {out['deleted_events']:,} "
                "events, commit"
            ),
        }
        head = ["part (original)", "seconds", "what"]
        body = [[name, f"{sec:.3f}", what.get(name, "")] for name, sec in out["parts"].items()]
        body.append(["all parts", f"{sum(out['parts'].values()):.3f}", ""])
        return head, body

    def compare_table(self) -> tuple[list[str], list[list[str]]]:
        r = self.the_run
        head = ["", "ours", "original", "original / ours"]
        body = [
            [
                "wall, whole child process (s)",
                f"{r.ours.wall_seconds:.2f}",
                f"{r.original.wall_seconds:.2f}",
                f"{r.original.wall_seconds / r.ours.wall_seconds:.1f}x",
            ],
            [
                "peak RSS, VmHWM (MB)",
                f"{r.ours.peak_mb:.0f}",
                f"{r.original.peak_mb:.0f}",
                f"{self.peak_ratio():.1f}x",
            ],
            [
                "  of which interpreter + imports (MB)",
                f"{r.ours_imports.peak_mb:.0f}",
                f"{r.original_imports.peak_mb:.0f}",
                "",
            ],
            [
                "  the job's own growth (MB)",
                f"{r.ours.peak_mb - r.ours_imports.peak_mb:.0f}",
                f"{r.original.peak_mb - r.original_imports.peak_mb:.0f}",
                "",
            ],
            [
                "ru_maxrss from wait4 (MB, for reference)",
                f"{r.ours.maxrss_kb / 1024:.0f}",
                f"{r.original.maxrss_kb / 1024:.0f}",
                "",
            ],
        ]
        return head, body

    def figures_table(self) -> tuple[list[str], list[list[str]]]:
        a, b = self.the_run.ours_figures, self.the_run.original_figures
        head = ["left behind", "ours", "original"]
        rows = [
            ("venue_metrics rows", a.venue_rows, b.venue_rows),
            ("  sum new_drop_count", a.new_drops, b.new_drops),
            ("  sum closed_count", a.closed, b.closed),
            ("  sum median duration (s)", f"{a.median_sum:,.1f}", f"{b.median_sum:,.1f}"),
            ("  sum avg duration (s)", f"{a.avg_sum:,.1f}", f"{b.avg_sum:,.1f}"),
            ("market_metrics rows", a.market_rows, b.market_rows),
            ("venue_rolling_metrics rows", a.rolling_rows, b.rolling_rows),
            ("drop_events left", a.events_left, b.events_left),
            ("discovery_buckets left", a.buckets_left, b.buckets_left),
            ("drop_events partitions left", a.partitions_left, b.partitions_left),
        ]
        body = [
            [
                name,
                f"{x:,}" if isinstance(x, int) else str(x),
                f"{y:,}" if isinstance(y, int) else str(y),
            ]
            for name, x, y in rows
        ]
        return head, body

    @staticmethod
    def prune_table(rows: list[PruneRow]) -> tuple[list[str], list[list[str]]]:
        fixed = any(r.fixed_day for r in rows)
        head = [
            "events in the table" if fixed else "events",
            "load s",
            "events in the day",
            "ours ms (median)",
            "ours min / max ms",
            "row DELETE ms (median)",
            "DELETE min / max ms",
            "DELETE / ours",
        ]
        body = [
            [
                f"{r.events:,}",
                f"{r.load_seconds:.1f}",
                f"{int(median([float(n) for n in r.day_events])):,}",
                f"{r.ours:.1f}",
                f"{min(r.ours_ms):.1f} / {max(r.ours_ms):.1f}",
                f"{r.delete:.1f}",
                f"{min(r.delete_ms):.1f} / {max(r.delete_ms):.1f}",
                f"{r.delete / r.ours:.1f}x",
            ]
            for r in sorted(rows, key=lambda r: r.size)
        ]
        return head, body

    @staticmethod
    def prune_parts_table(rows: list[PruneRow]) -> tuple[list[str], list[list[str]]]:
        fixed = any(r.fixed_day for r in rows)
        head = [
            "events in the table" if fixed else "events",
            "day's partition MB",
            "count(*) ms",
            "DROP TABLE ms",
            "other statements ms",
            "COMMIT ms",
            "rest ms",
            "ours ms (median)",
        ]
        body = [
            [
                f"{r.events:,}",
                f"{median([b / 2**20 for b in r.day_bytes]):.1f}",
                *(f"{r.part(p):.1f}" for p in PRUNE_PARTS),
                f"{r.ours:.1f}",
            ]
            for r in sorted(rows, key=lambda r: r.size)
        ]
        return head, body

    def prune_method(self) -> str:
        n = min(len(r.ours_ms) for r in self.prune)
        checkpoint = (
            "then an untimed CHECKPOINT (so no prune competes with the load's write-back)"
            if all(r.checkpointed for r in self.prune)
            else "(no CHECKPOINT: the role may not run it)"
        )
        indexes = max(r.index_seconds for r in self.prune)
        return (
            "Each size: a fresh database loaded the same way (events spread evenly over the "
            f"{self.days} days, so the pruned day is 1/{self.days} of the table and grows with "
            f"it), its past days aggregated (untimed), {checkpoint}. The sizes take turns (one "
            "day each per round, the order reversed every round), so they share the machine's "
            "conditions. Ours, on the real schema (drop_events: primary key and dedupe key): "
            "the oldest past days, one at a time, through `services."
            "maintenance.run._prune_events(settings, engine, [day])` (list partitions, LOCK the "
            "partition IN SHARE MODE, count its events, compare with the committed venue_metrics "
            "sum, DROP TABLE, COMMIT). Then every size gets the review's six drop_events indexes "
            f"(untimed, up to {indexes:.1f} s; migration 0003 dropped them, the DELETE reads "
            "through them) and a CHECKPOINT, and the review's row DELETE runs on the next past "
            "days, one transaction each: `DELETE FROM drop_events WHERE bucket_id < "
            "'<day after>_00:00'` (the earlier days are gone, so it deletes exactly one day). "
            f"Each method's first day is an untimed warm-up, then {n} timed days; times include "
            "the COMMIT. The row DELETE's later costs (dead rows for VACUUM, dirtied pages to "
            "write back) are not in its figure. Load s = tools.seed's time (every day built, "
            "indexed, ANALYZEd and attached), without the VACUUM."
        )

    def prune_fixed_method(self) -> str:
        rows = self.prune_fixed
        n = min(len(r.ours_ms) for r in rows)
        days = 2 * (1 + self.repeats)
        at_1m = " (one day's worth at 1M events)" if self.day_events == DAY_EVENTS else ""
        smallest = min(r.size for r in rows)
        fit = (
            f" ({days} x {self.day_events:,} events would not all fit in the {smallest:,}-event "
            "table at once)"
            if days * self.day_events > smallest
            else ""
        )
        checkpoint = (
            "one untimed CHECKPOINT"
            if all(r.checkpointed for r in rows)
            else "no CHECKPOINT (the role may not run it)"
        )
        return (
            f"Same method and order as above, but every pruned day holds {self.day_events:,} "
            f"events{at_1m} whatever the table's size. Each size: a fresh "
            f"database whose rest (size minus {self.day_events:,}) is spread over the "
            f"{self.days - days} other days ({self.past_days - days} past, {self.live_days} "
            f"live), while the {days} days to prune (warm-up + {n} timed, for each method) start "
            f"as empty partitions{fit}. Before each "
            f"round, each size's next day is filled with its {self.day_events:,} events "
            "(untimed: tools.seed's load of that day, which builds its partition with the "
            "parent's indexes of the moment, VACUUM (ANALYZE) of its partition, its "
            f"aggregation), then {checkpoint}; the earlier filled days are gone by then, so at "
            "every prune the table holds the events in the first column, of which the pruned "
            "day is the fixed-size one. Ours and the row DELETE are timed exactly as above: "
            "ours on the real schema, the review's indexes created (untimed) before the days "
            "the row DELETE prunes are filled."
        )

    def targets(self) -> list[tuple[str, str, str]]:
        out = []
        if self.run is not None:
            r = self.run
            ours_mb = r.ours.peak_mb
            ratio = self.peak_ratio()
            agg = self.agg_prune_seconds()
            out += [
                (
                    _verdict(ours_mb < TARGET_PEAK_MB),
                    f"peak RSS of the whole run < {TARGET_PEAK_MB:.0f} MB",
                    f"{ours_mb:.0f} MB",
                ),
                (
                    _verdict(ratio >= TARGET_PEAK_RATIO),
                    f"peak RSS >= {TARGET_PEAK_RATIO:.0f}x below the original's",
                    f"{ratio:.1f}x ({r.original.peak_mb:,.0f} MB vs {ours_mb:.0f} MB)",
                ),
                (
                    _verdict(agg < TARGET_AGG_PRUNE_SECONDS),
                    f"aggregate + prune of {r.data.events:,} events < "
                    f"{TARGET_AGG_PRUNE_SECONDS:.0f} s",
                    f"{agg:.2f} s (aggregate + prune_buckets + prune_events steps)",
                ),
            ]
        for rows in (self.prune, self.prune_fixed):
            if len(rows) < 2:
                continue
            small, big, ours_ratio, delete_ratio = self.prune_ratio(rows)
            small_day = int(median([float(n) for n in small.day_events]))
            big_day = int(median([float(n) for n in big.day_events]))
            if big.fixed_day:
                what = (
                    f"fixed-size day ({big_day:,} events), the issue's target: prune of that day "
                    f"with {big.events:,} events in the table <= {TARGET_PRUNE_RATIO}x its time "
                    f"with {small.events:,}"
                )
            else:
                what = (
                    f"day grows with the table ({small_day:,} -> {big_day:,} events in the day): "
                    f"prune of one day at {big.events:,} events <= {TARGET_PRUNE_RATIO}x its time "
                    f"at {small.events:,}"
                )
            out.append(
                (
                    _verdict(ours_ratio <= TARGET_PRUNE_RATIO),
                    what,
                    f"{ours_ratio:.2f}x ({big.ours:.1f} ms vs {small.ours:.1f} ms; fastest "
                    f"{min(big.ours_ms) / min(small.ours_ms):.2f}x); "
                    f"row DELETE: {delete_ratio:.1f}x ({big.delete:.1f} ms vs "
                    f"{small.delete:.1f} ms)",
                )
            )
        return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _fixed_title(report: Report) -> str:
    return (
        f"fixed-size day: {report.day_events:,} events in every pruned day, the rest of the "
        "table in the other days"
    )


def render_plain(report: Report) -> str:
    out = [
        "dropwatch daily maintenance run benchmark (bench/maintenance.py)",
        f"command:  {report.command}",
        f"machine:  {report.machine()}",
        f"database: {report.postgres()}",
        f"data:     {report.data()}",
    ]
    if report.run is not None:
        out += [
            "",
            report.method(),
            "",
            plain_table(*report.steps_table()),
            "",
            plain_table(*report.original_table()),
            "",
            plain_table(*report.compare_table()),
            "",
            plain_table(*report.figures_table()),
            f"both jobs left the same figures: {_agree(report)}",
        ]
    if report.prune:
        out += [
            "",
            f"prune one past day, day grows with the table (events spread over {report.days} "
            "days):",
            report.prune_method(),
            plain_table(*report.prune_table(report.prune)),
            "",
            "where our prune time goes (day grows with the table):",
            plain_table(*report.prune_parts_table(report.prune)),
            PRUNE_PARTS_NOTE,
        ]
    if report.prune_fixed:
        out += [
            "",
            f"prune one past day, {_fixed_title(report)}:",
            report.prune_fixed_method(),
            plain_table(*report.prune_table(report.prune_fixed)),
            "",
            "where our prune time goes (fixed-size day):",
            plain_table(*report.prune_parts_table(report.prune_fixed)),
        ]
    out += ["", "targets:"]
    out += [f"  {v:4}  {t}: {m}" for v, t, m in report.targets()]
    out += ["", f"(whole benchmark {report.seconds:.0f} s)"]
    return "\n".join(out)


def render_markdown(report: Report) -> str:
    out = [
        "## Daily maintenance run (`bench/maintenance.py`)",
        "",
        f"`{report.command}`",
        "",
        f"- Machine: {report.machine()}",
        f"- Database: {report.postgres()}",
        f"- Data: {report.data()}",
    ]
    if report.run is not None:
        out.append(f"- Method: {report.method()}")
    out += [
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    out += [f"| {t} | {m} | **{v}** |" for v, t, m in report.targets()]
    if report.run is not None:
        out += ["", "The run, step by step (ours):", "", md_table(*report.steps_table())]
        out += ["", "The original job, part by part:", "", md_table(*report.original_table())]
        out += ["", "Side by side:", "", md_table(*report.compare_table())]
        out += [
            "",
            f"What each job left behind (both must agree: **{_agree(report)}**):",
            "",
            md_table(*report.figures_table()),
        ]
    if report.prune:
        out += [
            "",
            "Pruning one past day, by table size: **day grows with the table** (events spread "
            f"over {report.days} days):",
            "",
            report.prune_method(),
            "",
            md_table(*report.prune_table(report.prune)),
            "",
            "Where our prune time goes (day grows with the table):",
            "",
            md_table(*report.prune_parts_table(report.prune)),
            "",
            PRUNE_PARTS_NOTE,
        ]
    if report.prune_fixed:
        out += [
            "",
            f"Pruning one past day, by table size: **{_fixed_title(report)}**:",
            "",
            report.prune_fixed_method(),
            "",
            md_table(*report.prune_table(report.prune_fixed)),
            "",
            "Where our prune time goes (fixed-size day):",
            "",
            md_table(*report.prune_parts_table(report.prune_fixed)),
        ]
    return "\n".join(out)


def _agree(report: Report) -> str:
    run = report.the_run
    return "yes" if run.ours_figures.agrees_with(run.original_figures) else "NO"


# --- main -----------------------------------------------------------------------------------


def points(report: Report) -> list[Point]:
    """The daily run's time and peak memory at its size, ours and the original's; one day's
    prune at each prune-scaling size, ours and the row DELETE's."""
    out = []
    if report.run is not None:
        r = report.run
        size = r.data.events
        out.append(
            Point("daily run, whole job", "s", size, r.ours.wall_seconds, r.original.wall_seconds)
        )
        out.append(Point("daily run, peak RSS", "MB", size, r.ours.peak_mb, r.original.peak_mb))
    for row in report.prune:
        out.append(
            Point("prune one past day (grows with the table)", "ms", row.size, row.ours, row.delete)
        )
    for row in report.prune_fixed:
        out.append(
            Point(f"prune one {row.fixed_day:,}-event day", "ms", row.size, row.ours, row.delete)
        )
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.maintenance",
        description=__doc__.split("\n\n")[0] if __doc__ else "",
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="drop_events to load")
    parser.add_argument(
        "--prune-sizes",
        default="100000,1000000,5000000",
        help="comma-separated table sizes for the prune scaling (empty: skip it)",
    )
    parser.add_argument(
        "--day-events",
        type=int,
        default=DAY_EVENTS,
        help="events in every pruned day of the fixed-size-day prune scaling, the rest of each "
        "--prune-sizes table in the other days (0: skip that part)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="days pruned per method and size")
    parser.add_argument(
        "--skip-run",
        "--only-prune",
        dest="skip_run",
        action="store_true",
        help="leave out the run comparison (steps 1-3): prune scaling only",
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown section")
    parser.add_argument("--json", help="also write the chart figures to this file")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.prune_sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--prune-sizes must be comma-separated integers")
    if args.events < MIN_EVENTS or any(s < MIN_EVENTS for s in args.sizes):
        parser.error(f"--events and --prune-sizes values must be at least {MIN_EVENTS}")
    if not 1 <= args.repeats <= PAST_DAYS // 2 - 1:
        parser.error(f"--repeats must be between 1 and {PAST_DAYS // 2 - 1}")
    if args.day_events < 0:
        parser.error("--day-events must be 0 (skip) or positive")
    if args.day_events and args.sizes and min(args.sizes) - args.day_events < MIN_EVENTS:
        parser.error(
            f"--day-events must leave at least {MIN_EVENTS} events for the rest of the "
            "smallest --prune-sizes table"
        )
    if args.skip_run and not args.sizes:
        parser.error("--skip-run with empty --prune-sizes: nothing to measure")
    return args


def command_line(argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python -m bench.maintenance", *argv]).strip()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds: children killed, databases dropped


def run(args: argparse.Namespace, command: str) -> Report:
    now = fixed_now()
    shape = seed_plan(MIN_EVENTS, now)  # the days, anchors and venues every load has
    with timed() as watch, bench_server() as server:
        embedded = not os.environ.get(EXTERNAL_URL_ENV)
        data_fs = filesystem(Path(tempfile.gettempdir())) if embedded else ""
        run_part: RunPart | None = None
        info: ServerInfo | None = None
        if not args.skip_run:
            run_part, info = measure_run(server, args.events, now)
        prune: list[PruneRow] = []
        prune_fixed: list[PruneRow] = []
        if args.sizes:
            # One measurement after the other: each drops its databases before the next loads.
            prune, prune_info = measure_prune(server, args.sizes, now, args.repeats)
            info = info or prune_info
            if args.day_events:
                prune_fixed, _ = measure_prune(
                    server, args.sizes, now, args.repeats, day_events=args.day_events
                )
    assert info is not None  # parse_args: the run part or a prune part is measured
    return Report(
        command=command,
        server=info,
        server_description=server.description,
        now=now,
        run=run_part,
        prune=prune,
        repeats=args.repeats,
        seconds=watch.seconds,
        data_fs=data_fs,
        prune_fixed=prune_fixed,
        day_events=args.day_events,
        shape=data_shape(shape),
        past_days=sum(1 for d in shape.days if d < shape.today),
        live_days=sum(1 for d in shape.days if d >= shape.today),
    )


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        report = run(args, command_line(raw))
    finally:
        kill_children()
        signal.signal(signal.SIGTERM, previous)
    print(render_markdown(report) if args.markdown else render_plain(report))
    write_points(args.json, "maintenance", points(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
