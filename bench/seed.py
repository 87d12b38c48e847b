"""Benchmark of `dropwatch seed` against loading the same rows into the indexed table.

    .venv/bin/python -m bench.seed [--sizes 100000,1000000] [--markdown] [--json FILE]

Not a test: it prints figures. For each size, four fresh databases on one server (the one
`DROPWATCH_DATABASE_URL` names, or an embedded PostgreSQL in a temporary directory), loaded
with the same plan (`tools.seed.make_plan`: the floor experiment's shape, ~0.267 open drops
per event, 2000 venues, 28 days) but for the second:

1. ours: `tools.seed.load` (each day built as a table, indexed in bulk, attached; the open
   state moved into open_slots in one bulk step);
2. the same plan without open state (`dropwatch seed --open-ratio 0`): the history alone;
3. the first plan with the review's six extra drop_events indexes in place (what migration 0003
   dropped), to show what they cost a bulk load;
4. the naive pattern: the same set-based SQL inserting straight into the partitioned, indexed
   table (every index maintained row by row), as the benchmarks' loaders did before.

and a ceiling, in the first database after its load:

5. floor: the rows ours wrote, written once more the same way with nothing to generate (each
   day copied from its partition into a new table, indexed, analyzed and committed by the same
   two loaders; the open state copied into a bare table and indexed in bulk). No generator can
   load faster than this on the machine that runs it.

Besides wall time, each variant reports the CPU time the whole machine spent busy during it
(Linux /proc/stat): with the database server on this machine, that is what the load cost,
and it moves less from run to run than wall time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine, text

from bench._db import (
    BenchServer,
    bench_database,
    bench_server,
    bench_settings,
    busy_cpu_seconds,
    cpu_count,
    cpu_model,
    create_review_indexes,
    memory_gib,
    migrate_to_head,
    server_info,
)
from bench.points import Point, write_points
from bench.tables import md_table, plain_table
from shared.db.engine import make_engine
from shared.db.partitions import ensure_partitions, partition_name
from tools.seed import SeedPlan, Shape, load, make_plan, open_state, parent
from tools.seed import day as day_rows
from tools.seed.loader import ANALYZED, LOADERS, add_venues_and_buckets

TARGET_EVENTS_PER_SECOND = 200_000
VARIANTS = ("ours", "history", "review_indexes", "naive", "floor")
TITLES = {
    "ours": "dropwatch seed",
    "history": "history only (--open-ratio 0)",
    "review_indexes": "dropwatch seed + the review's 6 indexes",
    "naive": "INSERT into the indexed table",
    "floor": "floor: the same rows copied",
}


def log(message: str) -> None:
    print(f"[bench.seed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def naive_load(engine: Engine, plan: SeedPlan) -> None:
    """The same rows, inserted straight into the partitioned table with its indexes."""
    with engine.begin() as conn:
        add_venues_and_buckets(conn, plan, plan.days)
        ensure_partitions(conn, plan.days)

    def one_day(day: dt.date) -> None:
        with engine.begin() as conn:
            day_rows.insert(conn, plan, day, 0)

    with ThreadPoolExecutor(max_workers=LOADERS) as pool:
        list(pool.map(one_day, plan.days))
    # The same statistics as ours: the analyzed columns of each day, and the small tables.
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for day in plan.days:
            conn.execute(text(f"ANALYZE {partition_name(day)} ({ANALYZED})"))
        conn.execute(text("ANALYZE open_slots, baseline_slots, discovery_buckets, venues"))


def copy_floor(engine: Engine, plan: SeedPlan) -> None:
    """Write the rows `load` wrote once more, the same way, with nothing to generate."""
    with engine.connect() as conn:
        indexes = parent.indexes(conn)
        rebuilt = open_state.definitions(conn)

    def one_day(day: dt.date) -> None:
        source = partition_name(day)
        copy = f"floor_{source}"
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
            like = "INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
            conn.execute(text(f"CREATE TABLE {copy} (LIKE drop_events {like})"))
            conn.execute(text(f"INSERT INTO {copy} SELECT * FROM {source}"))
            for index in indexes:
                conn.execute(text(index.ddl(copy)))
            conn.execute(text("SET LOCAL default_statistics_target = 20"))
            conn.execute(text(f"ANALYZE {copy} ({ANALYZED})"))

    def open_slots() -> None:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
            conn.execute(text("CREATE TABLE floor_open (LIKE open_slots INCLUDING DEFAULTS)"))
            conn.execute(text("INSERT INTO floor_open SELECT * FROM open_slots"))
            for item in rebuilt:  # open_slots' keys, indexes and foreign key, renamed
                conn.execute(text(item.create.replace("open_slots", "floor_open")))
            conn.execute(text("ANALYZE floor_open"))

    with ThreadPoolExecutor(max_workers=LOADERS) as pool:
        work = [pool.submit(open_slots)] + [pool.submit(one_day, day) for day in plan.days]
        for future in work:
            future.result()


@contextmanager
def _timed(run: Run, variant: str) -> Iterator[None]:
    cpu = busy_cpu_seconds()
    started = time.perf_counter()
    yield
    run.seconds[variant] = time.perf_counter() - started
    after = busy_cpu_seconds()
    if cpu is not None and after is not None:
        run.cpu[variant] = after - cpu


@dataclass
class Run:
    size: int
    events: int
    open_rows: int  # open_slots rows written (open drops + baseline)
    seconds: dict[str, float]
    counts: dict[str, int]  # drop_events after each variant (they must agree)
    history_events: int = 0  # the history-only plan's events (no open drops: a few more)
    cpu: dict[str, float] = field(default_factory=dict)  # busy CPU seconds, whole machine

    def rate(self, variant: str) -> float:
        events = self.history_events if variant == "history" else self.events
        return events / self.seconds[variant]


def measure(server: BenchServer, size: int, now: dt.datetime) -> Run:
    plan = make_plan(bench_settings(), size, now=now)
    history = make_plan(bench_settings(), size, now=now, shape=Shape(open_ratio=0, recent=0))
    run = Run(size, plan.events, sum(b.open_drops + b.baseline for b in plan.buckets), {}, {})
    run.history_events = history.events
    for variant in VARIANTS[:-1]:
        with bench_database("dw_bench_seed", server) as db:
            migrate_to_head(db.url)
            engine = make_engine(
                bench_settings(db_statement_timeout_ms=0, db_pool_size=4), name="bench", url=db.url
            )
            try:
                if variant == "review_indexes":
                    create_review_indexes(engine)
                with _timed(run, variant):
                    if variant == "naive":
                        naive_load(engine, plan)
                    else:
                        load(engine, history if variant == "history" else plan)
                with engine.connect() as conn:
                    run.counts[variant] = int(
                        conn.execute(text("SELECT count(*) FROM drop_events")).scalar_one()
                    )
                if variant == "ours":
                    with _timed(run, "floor"):
                        copy_floor(engine, plan)
            finally:
                engine.dispose()
        for done in (variant, "floor") if variant == "ours" else (variant,):
            log(
                f"{size:,}: {TITLES[done]}: {run.seconds[done]:.1f} s, "
                f"{run.rate(done):,.0f} events/s"
            )
    if run.counts.pop("history") != history.events or len(set(run.counts.values())) != 1:
        raise SystemExit(f"the variants loaded different event counts: {run.counts}")
    return run


@dataclass
class Report:
    command: str
    where: str
    postgres: str
    runs: list[Run]


def run(args: argparse.Namespace, command: str) -> Report:
    now = dt.datetime.now(dt.UTC)
    runs = []
    with bench_server() as server:
        with bench_database("dw_bench_seed_info", server) as db:
            engine = make_engine(bench_settings(), name="bench", url=db.url)
            info = server_info(engine)
            with engine.connect() as conn:
                wal = str(conn.execute(text("SHOW wal_level")).scalar_one())
            engine.dispose()
        for size in args.sizes:
            runs.append(measure(server, size, now))
    s = info.settings
    postgres = (
        f"PostgreSQL {info.version}, {server.description}; wal_level={wal}, "
        f"shared_buffers={s['shared_buffers']}, synchronous_commit={s['synchronous_commit']}"
    )
    return Report(command, server.description, postgres, runs)


def table(report: Report) -> tuple[list[str], list[list[str]]]:
    head = ["events", "open_slots rows", "load", "s", "events/s", "CPU s", "vs naive"]
    body = []
    for r in report.runs:
        for v in VARIANTS:
            cpu = r.cpu.get(v)
            body.append(
                [
                    f"{r.events:,}" if v == VARIANTS[0] else "",
                    f"{r.open_rows:,}" if v == VARIANTS[0] else "",
                    TITLES[v],
                    f"{r.seconds[v]:.1f}",
                    f"{r.rate(v):,.0f}",
                    "" if cpu is None else f"{cpu:.1f}",
                    f"{r.seconds['naive'] / r.seconds[v]:.1f}x",
                ]
            )
    return head, body


def targets(report: Report) -> list[tuple[str, str, str]]:
    big = report.runs[-1]
    out = []
    for variant, what in (
        ("ours", f"the default data ({big.open_rows:,} open_slots rows)"),
        ("history", "history only, no open state"),
    ):
        rate = big.rate(variant)
        out.append(
            (
                "PASS" if rate >= TARGET_EVENTS_PER_SECOND else "MISS",
                f"at least {TARGET_EVENTS_PER_SECOND:,} events/s: {what}",
                f"{rate:,.0f} events/s at {big.events:,} events",
            )
        )
    return out


def ceiling(report: Report) -> str:
    """What the floor says about the target on this machine."""
    big = report.runs[-1]
    floor, ours = big.rate("floor"), big.rate("ours")
    return (
        f"Ceiling at {big.events:,} events: writing the same rows with nothing to generate "
        f"runs at {floor:,.0f} events/s here ({big.seconds['floor']:.1f} s); ours reaches "
        f"{ours / floor:.0%} of it. The target is {TARGET_EVENTS_PER_SECOND / floor:.0%} of "
        "the ceiling."
    )


def machine() -> str:
    mem = memory_gib()
    memory = f", {mem:.0f} GiB RAM" if mem is not None else ""
    return (
        f"{cpu_count()} CPUs (nproc; {cpu_model()}){memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


METHOD = (
    "Wall time of the whole load from an empty migrated database: venues, buckets, every "
    "day's events and open state, statistics. Each variant loads the same plan on its own "
    f"fresh database with {LOADERS} day loaders at a time; the floor copies ours's rows in "
    "its database. CPU s: busy CPU time of the whole machine during the load."
)


def render_markdown(report: Report) -> str:
    out = [
        "## Seeding (`bench/seed.py`)",
        "",
        f"`{report.command}`",
        "",
        f"- Machine: {machine()}",
        f"- Database: {report.postgres}",
        f"- Method: {METHOD}",
        "",
        md_table(*table(report)),
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    out += [f"| {t} | {m} | **{v}** |" for v, t, m in targets(report)]
    out += ["", ceiling(report)]
    return "\n".join(out)


def render_plain(report: Report) -> str:
    lines = [report.command, machine(), report.postgres, "", plain_table(*table(report)), ""]
    lines += [f"{v}: {t}: {m}" for v, t, m in targets(report)]
    lines += [ceiling(report)]
    return "\n".join(lines)


def points(report: Report) -> list[Point]:
    return [
        Point("load the whole history", "s", r.events, r.seconds["ours"], r.seconds["naive"])
        for r in report.runs
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seed", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument(
        "--sizes", default="100000,1000000", help="comma-separated event counts (ascending)"
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown section")
    parser.add_argument("--json", help="also write the chart figures to this file")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted(int(s) for s in args.sizes.split(","))
    except ValueError:
        parser.error("--sizes must be comma-separated integers")
    if args.sizes[0] < 1000:
        parser.error("--sizes must be at least 1000")
    return args


def command_line(argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python -m bench.seed", *argv]).strip()


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    report = run(args, command_line(raw))
    render: Callable[[Report], str] = render_markdown if args.markdown else render_plain
    print(render(report))
    write_points(args.json, "seed", points(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
