"""`dropwatch seed` against loading the same rows into the indexed table, and against the floor:
the same rows copied with nothing to generate (docs/performance.md, Seeding).

    .venv/bin/python -m bench.seed [--sizes 100000,1000000] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench import harness
from bench.harness import Point, Section, Target, engine_for
from shared.db.partitions import ensure_partitions, partition_name
from shared.settings import Settings
from tools.database import PgServer, pg_server
from tools.seed import SeedPlan, Shape, load, make_plan, open_state, parent
from tools.seed import day as day_rows
from tools.seed.loader import ANALYZED, LOADERS, add_venues_and_buckets

TARGET_OF_FLOOR = 0.75  # ours must load at least this share of the floor's events/s
TITLES = {
    "ours": "dropwatch seed",
    "history": "history only (--open-ratio 0)",
    "review_indexes": "dropwatch seed + the review's 6 indexes",
    "naive": "INSERT into the indexed table",
    "floor": "floor: the same rows copied",
}


def in_parallel(job: Callable[[Any], None], items: Sequence[Any]) -> None:
    """`job` of each item, `LOADERS` at a time, as the seed loads its days."""
    with ThreadPoolExecutor(max_workers=LOADERS) as pool:
        list(pool.map(job, items))


def the_original(engine: Engine, plan: SeedPlan) -> None:
    """The same rows inserted straight into the partitioned table, every index maintained."""
    with engine.begin() as conn:
        add_venues_and_buckets(conn, plan, plan.days)
        ensure_partitions(conn, plan.days)

    def one_day(day: dt.date) -> None:
        with engine.begin() as conn:
            day_rows.insert(conn, plan, day, 0)

    in_parallel(one_day, plan.days)
    analyze = [f"ANALYZE {partition_name(day)} ({ANALYZED})" for day in plan.days]
    for sql in [*analyze, "ANALYZE open_slots, baseline_slots, discovery_buckets, venues"]:
        harness.vacuum(engine, sql)  # the statistics ours gathers


def the_floor(engine: Engine, plan: SeedPlan) -> None:
    """The rows `load` wrote, written once more the same way with nothing to generate."""
    with engine.connect() as conn:
        indexes, rebuilt = parent.indexes(conn), open_state.definitions(conn)
    state = [item.create.replace("open_slots", "floor_open") for item in rebuilt]
    copies = [("open_slots", "floor_open", "open_slots INCLUDING DEFAULTS", state, "")]
    for source in map(partition_name, plan.days):
        target, like = f"floor_{source}", "drop_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
        ddl = [index.ddl(target) for index in indexes]
        copies.append((source, target, like, ddl, f" ({ANALYZED})"))

    def copy(job: tuple[str, str, str, list[str], str]) -> None:
        source, target, like, ddl, columns = job
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
            conn.execute(text(f"CREATE TABLE {target} (LIKE {like})"))
            conn.execute(text(f"INSERT INTO {target} SELECT * FROM {source}"))
            for statement in ddl:
                conn.execute(text(statement))
            conn.execute(text("SET LOCAL default_statistics_target = 20"))
            conn.execute(text(f"ANALYZE {target}{columns}"))

    in_parallel(copy, copies)


@dataclass
class Run:
    events: int
    history_events: int  # the history-only plan's (no open drops: a few more)
    open_rows: int  # open_slots rows ours writes (open drops + baseline)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # busy CPU s of the whole machine

    def rate(self, variant: str) -> float:
        events = self.history_events if variant == "history" else self.events
        return events / self.seconds[variant]


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has been busy since boot (/proc/stat): what a load cost,
    the database server included, whatever else the cores were doing."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # not idle/iowait


@contextmanager
def timed(run: Run, variant: str) -> Iterator[None]:
    cpu = busy_cpu_seconds()
    with harness.timed() as timer:
        yield
    run.seconds[variant], run.cpu[variant] = timer.seconds, busy_cpu_seconds() - cpu
    harness.log(f"{run.events:,}: {TITLES[variant]}: {timer.seconds:.1f} s")


def measure_size(server: PgServer, size: int, now: dt.datetime) -> Run:
    """Each variant on its own fresh migrated database; the floor in ours's, after it."""
    plan = make_plan(Settings(), size, now=now)
    history = make_plan(Settings(), size, now=now, shape=Shape(open_ratio=0, recent=0))
    open_rows = sum(b.open_drops + b.baseline for b in plan.buckets)
    run, counts = Run(plan.events, history.events, open_rows), {}
    for variant in ("ours", "history", "review_indexes", "naive"):
        with server.migrated("dw_bench_seed") as name:
            engine = engine_for(server.url_for(name), db_pool_size=4)
            try:
                if variant == "review_indexes":
                    harness.create_review_indexes(engine)
                with timed(run, variant):
                    if variant == "naive":
                        the_original(engine, plan)
                    else:
                        load(engine, history if variant == "history" else plan)
                counts[variant] = harness.count(engine, "SELECT count(*) FROM drop_events")
                if variant == "ours":
                    with timed(run, "floor"):
                        the_floor(engine, plan)
            finally:
                engine.dispose()
    if counts.pop("history") != history.events or len(set(counts.values())) != 1:
        raise SystemExit(f"the variants loaded different event counts: {counts}")
    return run


@dataclass
class Report:
    command: str
    postgres: str
    runs: list[Run]


def measure(args: argparse.Namespace, command: str) -> Report:
    now = dt.datetime.now(dt.UTC)
    with pg_server("dropwatch-bench-") as server:
        postgres = harness.postgres(server, ("wal_level", "shared_buffers", "synchronous_commit"))
        runs = [measure_size(server, size, now) for size in args.size_list]
    return Report(command, postgres, runs)


def targets(report: Report) -> list[Target]:
    big = report.runs[-1]
    floor = big.rate("floor")
    out = []
    for variant, what in (
        ("ours", f"the default data ({big.open_rows:,} open_slots rows)"),
        ("history", "history only, no open state"),
    ):
        rate = big.rate(variant)
        out.append(
            Target(
                f"at least {TARGET_OF_FLOOR:.0%} of the floor's events/s: {what}",
                f"{rate:,.0f} events/s = {rate / floor:.0%} of {floor:,.0f} at {big.events:,}",
                rate >= TARGET_OF_FLOOR * floor,
            )
        )
    return out


def render(report: Report) -> str:
    head = ["events", "open_slots rows", "load", "s", "events/s", "CPU s", "vs naive"]
    body = []
    for r in report.runs:
        for i, (v, title) in enumerate(TITLES.items()):
            first = [f"{r.events:,}", f"{r.open_rows:,}"] if i == 0 else ["", ""]
            rate, cpu, vs = r.rate(v), r.cpu[v], r.seconds["naive"] / r.seconds[v]
            body.append([*first, title, f"{r.seconds[v]:.1f}", f"{rate:,.0f}", f"{cpu:.1f}"])
            body[-1].append(f"{vs:.1f}x")
    big = report.runs[-1]
    floor, ours = big.rate("floor"), big.rate("ours")
    ceiling = (
        f"Ceiling at {big.events:,} events: writing the same rows with nothing to generate "
        f"runs at {floor:,.0f} events/s here ({big.seconds['floor']:.1f} s); ours reaches "
        f"{ours / floor:.0%} of it (target {TARGET_OF_FLOOR:.0%})."
    )
    section = Section(
        "Seeding (`bench/seed.py`)",
        report.command,
        Machine=harness.machine(),
        Database=report.postgres,
        Loaders=f"{LOADERS} days at a time",
    )
    return str(section.table(head, body).targets(targets(report)).add(ceiling))


def points(report: Report) -> list[Point]:
    return [
        Point("load the whole history", "s", r.events, r.seconds["ours"], r.seconds["naive"])
        for r in report.runs
    ]


def main() -> int:
    p = harness.parser("seed", __doc__)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated event counts")
    args = p.parse_args()
    try:
        args.size_list = sorted(int(s) for s in args.sizes.split(","))
    except ValueError:
        p.error("--sizes must be comma-separated integers")
    if args.size_list[0] < 1000:
        p.error("--sizes must be at least 1000")
    return harness.main("seed", args, measure, render, points)


if __name__ == "__main__":
    sys.exit(main())
